"""Reading a user's feature file: import it and collect the views it declares.

The file is imported as a module named after its stem, with its folder first on
``sys.path`` (so it may import its neighbours). One apply must mean one
definition per name: two different views with the same name are refused, since
which of them would win is an accident of declaration order.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from strata.core.errors import InvalidArgumentError
from strata.sdk.features.view import FeatureView


def load_feature_views(path: Path) -> list[FeatureView]:
    """The distinct FeatureView objects at the top level of ``path``, in declaration order.

    Every problem is an InvalidArgumentError whose field is the file: missing, not
    Python, raising on import, declaring no view, or two different views of one name.
    """
    where = str(path)
    if not path.is_file():
        raise InvalidArgumentError(where, "no such file")
    if path.suffix != ".py":
        raise InvalidArgumentError(where, "expected a Python file (.py) declaring feature views")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise InvalidArgumentError(where, "cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    sys.modules[path.stem] = module
    try:
        spec.loader.exec_module(module)
    except InvalidArgumentError:
        raise
    except Exception as error:  # the user's code may raise anything; name it in one line
        raise InvalidArgumentError(
            where, f"raised {type(error).__name__} on import: {error}"
        ) from None
    finally:
        sys.path.remove(folder)
    found = [value for value in vars(module).values() if isinstance(value, FeatureView)]
    if not found:
        raise InvalidArgumentError(where, "declares no FeatureView at its top level")
    return distinct_views(where, found)


def distinct_views(where: str, views: list[FeatureView]) -> list[FeatureView]:
    """``views`` without repeats of one definition; refused when one name has two."""
    chosen: dict[str, FeatureView] = {}
    for view in views:
        first = chosen.setdefault(view.name, view)
        if first is not view and first.to_spec() != view.to_spec():
            raise InvalidArgumentError(
                where,
                f"feature view {view.name!r} is declared twice with different definitions",
            )
    return list(chosen.values())
