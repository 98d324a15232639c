"""loopsafe.db: SQLAlchemy async engines and sessions that are correct on every loop and process."""

import typing as _typing

try:
    import sqlalchemy as _sqlalchemy
except ImportError as _error:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        "loopsafe.db needs SQLAlchemy and asyncpg: pip install 'loopsafe[db]'"
    ) from _error

from .._deprecated import deprecated_names
from .._errors import DatabaseNotConfiguredError as DatabaseNotConfiguredError
from .._errors import PoolExhaustedError as PoolExhaustedError
from .._public import claim_public_names
from ._budget import PoolBudget as PoolBudget
from ._database import Database as Database
from ._default import configure as configure
from ._default import get_database as get_database
from ._default import get_engine as get_engine
from ._default import pool_status as pool_status
from ._default import run_in_transaction as run_in_transaction
from ._default import session as session
from ._default import session_maker as session_maker
from ._fastapi import session_dependency as session_dependency
from ._plan import BudgetPlan as BudgetPlan
from ._plan import ElasticBudget as ElasticBudget
from ._plan import Role as Role
from ._plan import RoleBudget as RoleBudget
from ._status import PoolStatus as PoolStatus

__all__ = (
    "BudgetPlan",
    "Database",
    "DatabaseNotConfiguredError",
    "ElasticBudget",
    "PoolBudget",
    "PoolExhaustedError",
    "PoolStatus",
    "Role",
    "RoleBudget",
    "configure",
    "get_database",
    "get_engine",
    "pool_status",
    "run_in_transaction",
    "session",
    "session_dependency",
    "session_maker",
)

claim_public_names(__name__, globals(), __all__)


def _lifespan() -> object:
    from ._fastapi import lifespan

    return lifespan


def _install_fastapi() -> object:
    from ._overload import install_fastapi

    return install_fastapi


def _overload_handler() -> object:
    from ._overload import overload_handler

    return overload_handler


# Renamed before 1.0; removed in 0.2.0 (see CHANGELOG). Typed for type checkers, served with a
# warning at run time (see loopsafe/__init__.py).
if _typing.TYPE_CHECKING:
    from ._fastapi import lifespan as lifespan
    from ._overload import install_fastapi as install_fastapi
    from ._overload import overload_handler as overload_handler
else:
    __getattr__ = deprecated_names(
        __name__,
        {
            "lifespan": ("loopsafe.fastapi.install(app)", _lifespan),
            "install_fastapi": ("loopsafe.fastapi.install(app)", _install_fastapi),
            "overload_handler": ("loopsafe.fastapi.install(app)", _overload_handler),
        },
    )
del claim_public_names, deprecated_names, _sqlalchemy
