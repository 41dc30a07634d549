"""The typed params: one frozen dataclass per params.yaml section, each in its own module
so that editing one section's schema reruns only the stages that read it
(``pipeline.core.config`` loads and validates the whole file). Imports nothing else of
the pipeline.
"""
