"""Reading a user's workflow file: import it and collect the workflows it declares.

The file is imported as a module named after its stem, with its folder first on
``sys.path``, so a task's entrypoint (``stem:function``) is exactly what an agent
imports from a bundle of that folder.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from strata.core.errors import InvalidArgumentError
from strata.sdk.workflows.workflow import Workflow


def load_workflows(path: Path) -> list[Workflow]:
    """The Workflow objects at the top level of ``path``, in declaration order.

    Every problem is an InvalidArgumentError whose field is the file: missing, not
    Python, raising on import, or declaring no workflow.
    """
    where = str(path)
    if not path.is_file():
        raise InvalidArgumentError(where, "no such file")
    if path.suffix != ".py":
        raise InvalidArgumentError(where, "expected a Python file (.py) declaring workflows")
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
    found = [value for value in vars(module).values() if isinstance(value, Workflow)]
    if not found:
        raise InvalidArgumentError(where, "declares no Workflow at its top level")
    return found
