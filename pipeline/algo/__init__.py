"""Layer 3, the mathematics of reconstruction: preprocessing, the networks' bundle adjustment
(``network_sfm``), classical sequence SfM with pycolmap (``classical_sfm``, ``calibration``), the
networks themselves (``models``), DA3 exports. Imports the layers below."""
