"""Exports of a run into ``<run_dir>/export/``: meshes (mesh.py), turntables and image
grids (video.py), the NeRF bundle (nerf.py); ``python -m src.reexport RUN_DIR`` re-exports
a finished or interrupted run from its checkpoint (src/reexport.py)."""
