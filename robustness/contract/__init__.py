"""The packaged contract suite: pytest modules, one test per rule (and term), run by the gate."""
