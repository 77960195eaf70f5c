"""The bundle factories, shared with the bundle tests."""

from tests.bundle.conftest import data_dir, make_bundle, signing_key

__all__ = ["data_dir", "make_bundle", "signing_key"]
