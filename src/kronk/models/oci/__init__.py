"""Models in OCI registries: push to and pull from any registry that speaks the
distribution API, in Ollama's layout (and Docker Model Runner's, for pulls).
See docs/distribution.md for the exact format."""

from kronk.models.oci.errors import RegistryAuthError, RegistryError
from kronk.models.oci.layout import ModelFacts
from kronk.models.oci.reference import Reference, is_oci_reference, parse_reference
from kronk.models.oci.transfer import PushResult, pull_model, push_model

__all__ = [
    "ModelFacts",
    "PushResult",
    "Reference",
    "RegistryAuthError",
    "RegistryError",
    "is_oci_reference",
    "parse_reference",
    "pull_model",
    "push_model",
]
