from ._check import CheckResult as CheckResult
from ._check import check as check
from ._errors import BrokenInterpreterPool as BrokenInterpreterPool
from ._errors import RemoteError as RemoteError
from ._errors import TerminatedError as TerminatedError
from .executor import SubinterpreterPoolExecutor as SubinterpreterPoolExecutor
from .interpreter import Interpreter as Interpreter
from .pool import SubinterpreterPool as SubinterpreterPool
from ._reusable import get_reusable_executor as get_reusable_executor

__version__: str
__all__: list[str]
