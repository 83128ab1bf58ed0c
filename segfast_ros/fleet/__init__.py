"""Fleet-scale replay: ``segfast replay-many``, a whole archive of bags through the node's
perception, on Ray (or in this process), resumable, into one results table.
"""
