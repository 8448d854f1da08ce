"""napari plugin: Deblur, Focus map and Refocus widgets (optional extra `microdeblur[napari]`).

`_engine` holds the Qt-free work (checks, weights cache, per-plane loops, the refocus session);
`_widgets` holds the docked widgets; `napari.yaml` is the npe2 manifest. Importing this package
imports neither napari nor Qt.
"""
