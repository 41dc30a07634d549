"""The DVC stages, one thin shell each (stage name = module name = its params section):
read params once, call the library, write outputs. Run as ``python -m
pipeline.stages.<stage>``. No stage imports a stage and no library module imports one.
"""
