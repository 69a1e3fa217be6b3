"""The ViT accelerator's program side: the instruction set (:mod:`.isa`), the compiler from an
integer graph to a program and one external-memory image (:mod:`.compiler`), and a functional
interpreter of that image (:mod:`.interpreter`) that checks the compile step against the golden
executor before any RTL runs (TVM VTA style: ISA, compiler and simulator check one another)."""
