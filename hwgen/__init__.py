"""Amaranth datapath generators, Verilog emission, hardware reports and the hwgen command."""
