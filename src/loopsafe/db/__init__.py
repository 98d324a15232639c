"""loopsafe.db: SQLAlchemy async engines and sessions that are correct on every loop and process."""

try:
    import sqlalchemy as _sqlalchemy
except ImportError as _error:  # pragma: no cover - exercised only without the extra installed
    raise ImportError(
        "loopsafe.db needs SQLAlchemy and asyncpg: pip install 'loopsafe[db]'"
    ) from _error

from .._errors import DatabaseNotConfiguredError as DatabaseNotConfiguredError
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
from ._fastapi import lifespan as lifespan
from ._fastapi import session_dependency as session_dependency
from ._overload import install_fastapi as install_fastapi
from ._overload import overload_handler as overload_handler
from ._plan import BudgetPlan as BudgetPlan
from ._plan import ElasticBudget as ElasticBudget
from ._plan import Role as Role
from ._plan import RoleBudget as RoleBudget

__all__ = (
    "BudgetPlan",
    "Database",
    "DatabaseNotConfiguredError",
    "ElasticBudget",
    "PoolBudget",
    "Role",
    "RoleBudget",
    "configure",
    "get_database",
    "get_engine",
    "install_fastapi",
    "lifespan",
    "overload_handler",
    "pool_status",
    "run_in_transaction",
    "session",
    "session_dependency",
    "session_maker",
)

claim_public_names(__name__, globals(), __all__)
del claim_public_names, _sqlalchemy
