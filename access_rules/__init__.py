"""The shared decision rules: who may open a door when (domain, used by Unlock and ExplainAccess).

Pure code: no I/O, no service imports. `rules` decides; `codec` maps the
permissions events to what `rules` reads and back.
"""
