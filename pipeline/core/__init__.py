"""The ground floor: params loading (config), user-facing errors and the stage runner,
file names shared between stages, atomic writes that never go through a DVC cache link,
provenance and the run record, seeding, and the process's malloc settings (heap).
Imports only ``pipeline.params`` and third-party libraries; everything else may import it.
"""
