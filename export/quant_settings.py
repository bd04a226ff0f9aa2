"""Quantisation settings, targets and errors, shared by the quantisation modules."""

from __future__ import annotations

from dataclasses import dataclass

from onnxruntime.quantization import CalibrationMethod, QuantType

#: Calibration images taken from the training side of the split.
DEFAULT_CALIBRATION_IMAGES = 300
#: The split training and ``evaluate --split`` use: validation fraction and seed.
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_SEED = 1337
#: Targets the int8 model must meet against the float one, or it is not written.
MAX_ACCURACY_DROP_POINTS = 1.0
MIN_CAM_CORRELATION = 0.9

QUANT_TYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


class QuantizeError(ValueError):
    """The bundle cannot be quantised; the message says why."""


class TargetMissed(QuantizeError):
    """The int8 model misses an accuracy or heatmap target against the float one; it was not
    written."""


@dataclass(frozen=True)
class QuantSettings:
    """How to quantise: QDQ, with these activation and weight types (``uint8``/``int8``)."""

    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    # 7-bit weights. U8S8 products saturate in int16 on x86 CPUs without VNNI (measured here:
    # the full-range scenes-resnet18-int8 fell from 90.2% to 89.1%, scenes-mini-int8 from 86%
    # to 75%), and a bundle must not depend on the CPU it was made on.
    reduce_range: bool = True
    calibration_method: str = "minmax"

    def __post_init__(self) -> None:
        for what, value in (("activation", self.activation_type), ("weight", self.weight_type)):
            if value not in QUANT_TYPES:
                raise ValueError(f"{what} type must be one of {sorted(QUANT_TYPES)}, not {value!r}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise ValueError(
                f"calibration method must be one of {sorted(CALIBRATION_METHODS)}, "
                f"not {self.calibration_method!r}"
            )

    @property
    def label(self) -> str:
        """U8S8, S8S8, ...: activation and weight types in the usual short form."""
        short = {"uint8": "U8", "int8": "S8"}
        return short[self.activation_type] + short[self.weight_type]
