"""Data contracts of segflow: pydantic schemas and the exception tree. Imports no torch."""

from data_contracts.dataset import (
    Case,
    CaseKind,
    DatasetManifest,
    FileRecord,
    LabelKind,
    LabelStats,
    RejectedInput,
)
from data_contracts.errors import *  # noqa: F403
from data_contracts.errors import __all__ as _error_names
from data_contracts.geometry import Geometry, ImageGeometry, RasterGeometry, VolumeGeometry
from data_contracts.inference import InferenceOptions
from data_contracts.ingest_options import IngestOptions
from data_contracts.model_spec import ModelSpec
from data_contracts.plan import (
    ChannelNormalization,
    ChannelStats,
    DatasetFingerprint,
    MissingChannels,
    NetworkChoice,
    NormalizationScheme,
    TrainingPlan,
)
from data_contracts.postprocess import PostprocessConfig
from data_contracts.quality import (
    LOW_PROBABILITY,
    ChannelRange,
    DriftFlag,
    DriftPolicy,
    DriftReference,
    DriftStatus,
    FileQuality,
    confidence_score,
)
from data_contracts.settings import Settings, apply_environment, get_settings
from data_contracts.train_config import TrainConfig

__all__ = [
    "LOW_PROBABILITY",
    "ChannelRange",
    "DriftFlag",
    "DriftReference",
    "DriftPolicy",
    "DriftStatus",
    "FileQuality",
    "confidence_score",
    "Case",
    "CaseKind",
    "ChannelNormalization",
    "ChannelStats",
    "DatasetFingerprint",
    "DatasetManifest",
    "NetworkChoice",
    "FileRecord",
    "Geometry",
    "ImageGeometry",
    "InferenceOptions",
    "IngestOptions",
    "LabelKind",
    "LabelStats",
    "ModelSpec",
    "MissingChannels",
    "NormalizationScheme",
    "PostprocessConfig",
    "RasterGeometry",
    "RejectedInput",
    "Settings",
    "TrainConfig",
    "TrainingPlan",
    "VolumeGeometry",
    "apply_environment",
    "get_settings",
    *_error_names,
]
