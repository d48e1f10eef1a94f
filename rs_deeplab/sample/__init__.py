"""Deterministic synthetic sample scenes in every supported dataset's on-disk format (demo, tests, benchmarks).

The generator (:func:`generate_scene`) builds an aerial-like RGB+NIR scene from a street layout rendered with
sun shading, cast shadows and sensor noise; the writers put it (or simpler street views and object photos)
into the folder layouts and encodings of ISPRS Potsdam/Vaihingen, LoveDA, iSAID, Pascal VOC and Cityscapes.
"""

from rs_deeplab.sample.aerial import ISAIDFiles, LoveDAFiles, write_isaid, write_loveda
from rs_deeplab.sample.cityscapes import write_cityscapes
from rs_deeplab.sample.isprs import PotsdamFiles, VaihingenFiles, write_potsdam, write_vaihingen
from rs_deeplab.sample.output import preview_png
from rs_deeplab.sample.scene import STYLES, Scene, boundary_mask, generate_scene
from rs_deeplab.sample.voc import write_voc

__all__ = [
    "STYLES",
    "ISAIDFiles",
    "LoveDAFiles",
    "PotsdamFiles",
    "Scene",
    "VaihingenFiles",
    "boundary_mask",
    "generate_scene",
    "preview_png",
    "write_cityscapes",
    "write_isaid",
    "write_loveda",
    "write_potsdam",
    "write_vaihingen",
    "write_voc",
]
