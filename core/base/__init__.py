"""The bottom layer: paths, atomic files, process identity, the configuration dataclasses. Standard library only;
imports no other package of core/."""
