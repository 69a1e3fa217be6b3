"""cocotb testbenches, simulator runner helpers and the RTL executor (simulated hardware)."""
