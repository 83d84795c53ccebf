"""The model zoo: supported architectures, their cut points, and cutting them."""
from .anatomy import Anatomy, input_channels, view
from .families import Family, default_input_size, dissect, families, family_of, register_family, token_extras
from .models import create_model, family_for_name, list_models, load_checkpoint, read_state_dict, resolve_model
from .spec import POSITIONS, STAGES, CutPoint, ModelSpec, as_size, model_spec
from .split import Part, back_part, front_part, split

__all__ = [
    "POSITIONS", "STAGES", "Anatomy", "CutPoint", "Family", "ModelSpec", "Part", "as_size", "back_part",
    "create_model", "default_input_size", "dissect", "families", "family_for_name", "family_of", "front_part", "list_models",
    "load_checkpoint", "model_spec", "read_state_dict", "register_family", "resolve_model", "split", "token_extras", "view",
]
