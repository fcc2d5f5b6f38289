"""A user's declaration file (workflows, feature views): import it, collect what it declares.

The file is imported as a module named after its stem, with its folder first on
``sys.path``, so it may import its neighbours and a task's entrypoint
(``stem:function``) is exactly what an agent imports from a bundle of that folder.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TypeVar

from strata.core.errors import InvalidArgumentError

T = TypeVar("T")


def declared_in(path: Path, kind: type[T]) -> list[T]:
    """The ``kind`` objects at the top level of ``path``, in declaration order.

    Every problem is an InvalidArgumentError whose field is the file: missing, not
    Python, raising on import, or declaring no ``kind``.
    """
    where, name = str(path), kind.__name__
    if not path.is_file():
        raise InvalidArgumentError(where, "no such file")
    if path.suffix != ".py":
        raise InvalidArgumentError(where, f"expected a Python file (.py) declaring {name}s")
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
    found = [value for value in vars(module).values() if isinstance(value, kind)]
    if not found:
        raise InvalidArgumentError(where, f"declares no {name} at its top level")
    return found
