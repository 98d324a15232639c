"""BudgetPlan: one connection limit shared between roles (web, workers…), static or elastic."""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .._log import redact_dsn
from ._budget import PoolBudget, _min_max_connections, _usable

__all__ = ("BudgetPlan", "ElasticBudget", "Role", "RoleBudget")

#: Where an elastic plan's ledger lives when the plan does not say: these variables, in order.
LEDGER_URL_VARIABLES = ("LOOPSAFE_LEDGER_URL", "REDIS_URL")
_LEDGER_SCHEMES = ("redis://", "rediss://", "unix://")
# The plan name goes inside a Redis hash tag ({name}); a brace or space would break the key.
_PLAN_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,100}")


@dataclass(frozen=True)
class Role:
    """The processes of one kind in a deployment, and how much of the limit they deserve.

    A **static** role names its ``processes``: every process of the role across all hosts, each
    with ``loops`` event loops (a Celery threads pool of 8 has 8). ``weight`` is the share of one
    process relative to the other roles' processes (a web process with weight 3 gets three times a
    weight-1 worker process). ``minimum`` is what each process of the role is guaranteed whatever
    the weights (default: one connection per loop).

    An **elastic** role leaves ``processes`` out (None): any number of its processes, joining and
    leaving at any time, share the plan's elastic part through a ledger in Redis, one lease per
    connection in use. ``priority`` orders elastic roles (higher is served first); ``headroom`` is
    how many connections a role leaves free for the roles above it: it takes a connection only
    while at least that many stay free. ``weight`` sets an elastic process's fallback share while
    Redis is unreachable; ``loops`` and ``minimum`` have no meaning for an elastic role.

    Raises `TypeError`/`ValueError` for invalid numbers, and `ValueError` for ``priority`` or
    ``headroom`` on a static role and ``loops``/``minimum`` on an elastic one.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``processes`` is optional (elastic roles); ``priority``, ``headroom``.
    """

    processes: int | None = None
    loops: int = 1
    weight: float = 1.0
    minimum: int = 0
    priority: int = 0
    headroom: int = 0

    def __post_init__(self) -> None:
        for name in ("loops", "minimum", "priority", "headroom"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Role.{name} must be an int, got {value!r}")
        processes = self.processes
        if processes is not None and (
            isinstance(processes, bool) or not isinstance(processes, int)
        ):
            raise TypeError(
                f"Role.processes must be an int, or None for an elastic role, got {processes!r}"
            )
        if (processes is not None and processes < 1) or self.loops < 1:
            raise ValueError(
                f"Role.processes and Role.loops must be at least 1, got {processes} and "
                f"{self.loops} (leave processes out for an elastic role)"
            )
        if self.minimum < 0:
            raise ValueError(f"Role.minimum must be >= 0 connections, got {self.minimum}")
        if self.priority < 0 or self.headroom < 0:
            raise ValueError(
                f"Role.priority and Role.headroom must be >= 0, got {self.priority} and "
                f"{self.headroom}"
            )
        weight = self.weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise TypeError(f"Role.weight must be a number, got {weight!r}")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"Role.weight must be a finite number > 0, got {weight!r}")
        if processes is None:
            if self.loops != 1 or self.minimum != 0:
                raise ValueError(
                    f"Role(loops={self.loops}, minimum={self.minimum}) is elastic (no processes) "
                    "and an elastic role takes one lease per connection whatever its loops, with "
                    "no per-process minimum: drop loops/minimum, or give processes to make it "
                    "static. To keep connections free for a role, give the roles below it headroom."
                )
        elif self.priority != 0 or self.headroom != 0:
            raise ValueError(
                f"Role(processes={processes}, priority={self.priority}, headroom="
                f"{self.headroom}): priority and headroom order elastic roles only; a static role "
                "has its own fixed share. Drop processes to make the role elastic, or drop "
                "priority/headroom."
            )

    @property
    def elastic(self) -> bool:
        """Whether the role is elastic (no process count; shares the plan through the ledger)."""
        return self.processes is None

    @property
    def floor_per_loop(self) -> int:
        """Connections each loop is guaranteed: ``minimum`` spread over the loops, at least 1."""
        return max(1, math.ceil(self.minimum / self.loops))


@dataclass(frozen=True)
class RoleBudget(PoolBudget):
    """`PoolBudget` for one process of a `BudgetPlan` role: ``processes`` and
    ``loops_per_process`` are the role's, ``per_loop`` is the share the plan gave each loop.

    Pass it to `Database(budget=...)` like any `PoolBudget`.

    .. versionadded:: 0.1.0
    """

    role: str = "default"
    loop_share: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.loop_share, bool) or not isinstance(self.loop_share, int):
            raise TypeError(f"RoleBudget.loop_share must be an int, got {self.loop_share!r}")
        if self.loop_share < 1 or self.total > self.usable:
            raise ValueError(
                f"RoleBudget.loop_share={self.loop_share} must be at least 1 and keep the role's "
                f"{self.processes} × {self.loops_per_process} loops within {self.usable} usable "
                "connections; build it with BudgetPlan.budget_for()."
            )

    @property
    def per_loop(self) -> int:
        """Connections one event loop of this role may hold (``pool_size + max_overflow``)."""
        return self.loop_share


@dataclass(frozen=True)
class ElasticBudget(RoleBudget):
    """`RoleBudget` of an elastic role: no share of its own, a lease per connection in use.

    Its processes share the plan's elastic part (`BudgetPlan.elastic_limit`) through the plan's
    ledger in Redis; ``per_loop``/``per_process`` are the most one process could ever hold
    (``elastic_limit - headroom``). Pass it to `Database(budget=...)`; ``pooler="transaction"``
    takes a lease per checkout, any other pooler (or none) a lease per open connection. Build it
    with `BudgetPlan.budget_for`.

    .. versionadded:: 0.2.0
    """

    plan: BudgetPlan | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.plan, BudgetPlan) or not self.plan.roles[self.role].elastic:
            raise ValueError(
                f"ElasticBudget needs the plan of its elastic role {self.role!r}; build it with "
                "BudgetPlan.budget_for()."
            )

    @property
    def spec(self) -> Role:
        """The role as the plan names it."""
        assert self.plan is not None
        return self.plan.roles[self.role]

    @property
    def limit(self) -> int:
        """Connections every elastic process of the plan together may hold."""
        assert self.plan is not None
        return self.plan.elastic_limit

    @property
    def priority(self) -> int:
        return self.spec.priority

    @property
    def headroom(self) -> int:
        return self.spec.headroom

    @property
    def higher_roles(self) -> tuple[str, ...]:
        """The elastic roles served before this one (strictly higher priority)."""
        assert self.plan is not None
        return tuple(
            name
            for name, role in self.plan.roles.items()
            if role.elastic and role.priority > self.priority
        )

    def __repr__(self) -> str:
        assert self.plan is not None
        return (
            f"ElasticBudget(plan={self.plan.name!r}, role={self.role!r}, limit={self.limit}, "
            f"priority={self.priority}, headroom={self.headroom})"
        )


@dataclass(frozen=True)
class BudgetPlan:
    """A server's connection limit planned once for a whole deployment, role by role.

    Each role's processes get a share proportional to their ``weight``, never below the role's
    ``minimum``; every process caps itself at its share (a `RoleBudget`), so the sum over all
    processes of all roles never exceeds ``usable = floor(max_connections × (1 − reserve))`` and
    no worker can take the connections planned for a web process. Shares are whole connections
    per loop, rounded down: what rounding leaves over stays unused.

    Raises `ValueError` when the roles' minimums (at least one connection per loop) do not fit,
    with what would fit.

    .. versionadded:: 0.1.0
    """

    max_connections: int
    roles: Mapping[str, Role] = field(hash=False)
    reserve: float = 0.1
    ledger: str | None = None
    name: str = "default"
    _shares: Mapping[str, int] = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.roles, Mapping) or not self.roles:
            raise ValueError(
                f"BudgetPlan.roles must map at least one role name to a Role, got {self.roles!r}"
            )
        for name, role in self.roles.items():
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"BudgetPlan role names must be non-empty strings, got {name!r}")
            if not isinstance(role, Role):
                raise TypeError(f"BudgetPlan.roles[{name!r}] must be a Role, got {role!r}")
        object.__setattr__(self, "roles", MappingProxyType(dict(self.roles)))
        max_connections, reserve = self.max_connections, self.reserve
        if isinstance(max_connections, bool) or not isinstance(max_connections, int):
            raise TypeError(f"BudgetPlan.max_connections must be an int, got {max_connections!r}")
        if max_connections < 1:
            raise ValueError(
                f"BudgetPlan.max_connections must be at least 1, got {max_connections}"
            )
        if isinstance(reserve, bool) or not isinstance(reserve, (int, float)):
            raise TypeError(f"BudgetPlan.reserve must be a float in [0, 1), got {reserve!r}")
        if not 0 <= reserve < 1:
            raise ValueError(f"BudgetPlan.reserve must be in [0, 1), got {reserve!r}")
        if not isinstance(self.name, str) or not _PLAN_NAME.fullmatch(self.name):
            raise ValueError(
                "BudgetPlan.name is the ledger's key namespace: 1-100 letters, digits or _.:- "
                f"characters, got {self.name!r}"
            )
        if self.ledger is not None and (
            not isinstance(self.ledger, str) or not self.ledger.startswith(_LEDGER_SCHEMES)
        ):
            raise ValueError(
                "BudgetPlan.ledger is the Redis holding the elastic ledger: redis://host:port/db, "
                f"rediss://… or unix://…, got {redact_dsn(self.ledger)!r}"
            )
        needed = _floors(self.roles)
        if needed > self.usable:
            raise ValueError(
                f"BudgetPlan cannot give every role its minimum: the roles need {needed} "
                f"connections (at least one per loop, or the role's minimum) but only {self.usable}"
                f" of {self.max_connections} are usable after the {self.reserve:.0%} reserve. "
                f"What would fit: max_connections ≥ {self.minimum_max_connections()}, fewer "
                "processes or loops, or lower minimums."
            )
        if not self.elastic:
            object.__setattr__(self, "_shares", _allocate(self.usable, self.roles))
            return
        # Static roles beside elastic ones keep their guaranteed floor; the rest is elastic.
        object.__setattr__(
            self,
            "_shares",
            {name: role.floor_per_loop for name, role in self.roles.items() if not role.elastic},
        )
        limit = self.elastic_limit
        if limit < 1:
            raise ValueError(
                f"BudgetPlan leaves nothing for its elastic roles: the static roles take all "
                f"{self.usable} usable connections. What would fit: max_connections ≥ "
                f"{_min_max_connections(needed + 1, self.reserve)}, or fewer static processes."
            )
        for name, role in self.roles.items():
            if role.elastic and role.headroom >= limit:
                raise ValueError(
                    f"BudgetPlan role {name!r} has headroom={role.headroom} but the elastic "
                    f"roles share only {limit} connections, so it could never take one. What "
                    f"would fit: headroom ≤ {limit - 1}, or a larger max_connections."
                )

    @property
    def usable(self) -> int:
        """Connections the whole deployment may hold: ``floor(max_connections × (1 − reserve))``."""
        return _usable(self.max_connections, self.reserve)

    @property
    def elastic(self) -> bool:
        """Whether any role is elastic (the plan then needs its ledger in Redis)."""
        return any(role.elastic for role in self.roles.values())

    @property
    def elastic_limit(self) -> int:
        """Connections the elastic roles share: `usable` less the static roles' floors (0 when
        no role is elastic)."""
        if not self.elastic:
            return 0
        return self.usable - _floors(self.roles)

    @property
    def ledger_url(self) -> str:
        """The Redis URL of the ledger: ``ledger``, else ``$LOOPSAFE_LEDGER_URL``, else
        ``$REDIS_URL``.

        Raises `ValueError` when none is set, or the variable's URL is not a Redis URL.
        """
        if self.ledger is not None:
            return self.ledger
        for variable in LEDGER_URL_VARIABLES:
            url = os.environ.get(variable, "").strip()
            if url:
                if not url.startswith(_LEDGER_SCHEMES):
                    raise ValueError(
                        f"${variable} must be a Redis URL (redis://host:port/db) for the elastic "
                        f"ledger of BudgetPlan {self.name!r}, got {redact_dsn(url)!r}"
                    )
                return url
        raise ValueError(
            f"BudgetPlan {self.name!r} has elastic roles, whose ledger lives in Redis: pass "
            "BudgetPlan(ledger='redis://host:6379/0') or set LOOPSAFE_LEDGER_URL (or REDIS_URL)."
        )

    def budget_for(self, role: str | None = None) -> RoleBudget:
        """The budget of one process of `role` (default: ``$LOOPSAFE_ROLE``).

        Raises `ValueError` for a role the plan does not name, or when neither is given.

        .. versionadded:: 0.1.0
        """
        if role is None:
            role = os.environ.get("LOOPSAFE_ROLE", "").strip()
            if not role:
                raise ValueError(
                    "BudgetPlan.budget_for() needs a role: pass one or set LOOPSAFE_ROLE to one of "
                    f"{', '.join(self.roles)}."
                )
        if role not in self.roles:
            raise ValueError(
                f"role {role!r} is not in the budget plan, whose roles are "
                f"{', '.join(self.roles)}; fix LOOPSAFE_ROLE or the plan."
            )
        spec = self.roles[role]
        if spec.elastic:
            self.ledger_url  # noqa: B018 - fails now, naming the fix, rather than at first checkout
            cap = self.elastic_limit - spec.headroom
            return ElasticBudget(
                max_connections=self.max_connections,
                processes=1,
                loops_per_process=1,
                reserve=self.reserve,
                role=role,
                loop_share=cap,
                plan=self,
            )
        assert spec.processes is not None
        return RoleBudget(
            max_connections=self.max_connections,
            processes=spec.processes,
            loops_per_process=spec.loops,
            reserve=self.reserve,
            role=role,
            loop_share=self._shares[role],
        )

    @property
    def total(self) -> int:
        """Connections all processes of all roles together may hold (≤ `usable`)."""
        static = sum(
            self.budget_for(name).total for name, role in self.roles.items() if not role.elastic
        )
        return static + self.elastic_limit

    def minimum_max_connections(self) -> int:
        """The smallest ``max_connections`` at which this plan's roles fit."""
        return _min_max_connections(_floors(self.roles), self.reserve)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> BudgetPlan:
        """A plan from its JSON form: ``{"max_connections": 50, "reserve": 0.1, "roles":
        {"web": {"processes": 2, "weight": 3}, "content": {"processes": 6}}}``.

        Raises `ValueError` naming what is missing or of the wrong kind.

        .. versionadded:: 0.1.0
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("roles"), Mapping):
            raise ValueError(
                'a budget plan is an object with "max_connections" and "roles" '
                '({"web": {"processes": 2, "weight": 3}, ...}), got ' + repr(data)[:200]
            )
        unknown = set(data) - {"max_connections", "reserve", "roles", "ledger", "name"}
        if unknown:
            raise ValueError(f"unknown budget plan keys: {', '.join(sorted(unknown))}")
        roles = {}
        for name, spec in data["roles"].items():
            if not isinstance(spec, Mapping):
                raise ValueError(
                    f"budget plan role {name!r} must be an object such as "
                    f'{{"processes": 2}} or {{"priority": 10}}, got {spec!r}'
                )
            try:
                roles[name] = Role(**spec)
            except TypeError as error:
                raise ValueError(f"budget plan role {name!r}: {error}") from None
        if "max_connections" not in data:
            raise ValueError('a budget plan needs "max_connections"')
        return cls(
            data["max_connections"],
            roles,
            data.get("reserve", 0.1),
            ledger=data.get("ledger"),
            name=data.get("name", "default"),
        )

    def to_mapping(self) -> dict[str, Any]:
        """The JSON form `from_mapping` reads.

        .. versionadded:: 0.1.0
        """
        mapping: dict[str, Any] = {
            "max_connections": self.max_connections,
            "reserve": self.reserve,
            "roles": {name: _role_mapping(role) for name, role in self.roles.items()},
        }
        if self.ledger is not None:
            mapping["ledger"] = self.ledger
        if self.name != "default" or self.elastic:
            mapping["name"] = self.name
        return mapping

    @classmethod
    def from_env(cls) -> BudgetPlan:
        """The plan in ``$LOOPSAFE_BUDGET_PLAN``: its JSON form inline, or a path to a JSON file.

        Every process of the deployment reads the same plan, and ``$LOOPSAFE_ROLE`` names its own
        role (see `budget_for`). Raises `ValueError` when the variable is unset, the file is
        missing or the JSON is invalid.

        .. versionadded:: 0.1.0
        """
        raw = os.environ.get("LOOPSAFE_BUDGET_PLAN", "").strip()
        if not raw:
            raise ValueError(
                "BudgetPlan.from_env() needs LOOPSAFE_BUDGET_PLAN: the plan as JSON "
                '({"max_connections": 50, "roles": {"web": {"processes": 2, "weight": 3}}}) '
                "or the path of a file holding it."
            )
        return cls.load(raw, source="LOOPSAFE_BUDGET_PLAN")

    @classmethod
    def load(cls, plan: str, *, source: str = "the budget plan") -> BudgetPlan:
        """A plan from its JSON form given inline (starting with ``{``) or as a file path.

        Raises `ValueError` naming `source` when the file cannot be read or the JSON is invalid.

        .. versionadded:: 0.1.0
        """
        text = plan
        if not plan.lstrip().startswith("{"):
            try:
                text = Path(plan).read_text()
            except OSError as error:
                raise ValueError(
                    f"{source} names the file {plan!r}, which cannot be read: {error.strerror}"
                ) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source} is not valid JSON: {error}") from None
        return cls.from_mapping(data)


def _role_mapping(role: Role) -> dict[str, Any]:
    if role.elastic:
        return {"priority": role.priority, "headroom": role.headroom, "weight": role.weight}
    return {"processes": role.processes, "loops": role.loops, "weight": role.weight,
            "minimum": role.minimum}  # fmt: skip


def _floors(roles: Mapping[str, Role]) -> int:
    """Connections the static roles' guaranteed minimums add up to."""
    return sum(
        role.processes * role.loops * role.floor_per_loop
        for role in roles.values()
        if role.processes is not None
    )


def _allocate(usable: int, roles: Mapping[str, Role]) -> dict[str, int]:
    """Connections per loop for each role; the caller has checked that the floors fit.

    Water-filling: split what is left by weight over the processes of the roles not yet fixed;
    a role whose weighted share falls below its floor is fixed at the floor, and the rest is
    split again. Flooring each share keeps the sum within `usable`.
    """
    counts = {name: role.processes or 0 for name, role in roles.items()}
    fixed: dict[str, int] = {}
    while True:
        free = usable - sum(counts[n] * roles[n].loops * s for n, s in fixed.items())
        open_roles = [name for name in roles if name not in fixed]
        if not open_roles:
            return fixed
        # Fractions, not floats: a share computed as 2.9999… must not round down, nor 3.0000…1 up.
        weights = sum(Fraction(counts[n]) * Fraction(roles[n].weight) for n in open_roles)
        shares = {
            name: math.floor(
                Fraction(free) * Fraction(roles[name].weight) / weights / roles[name].loops
            )
            for name in open_roles
        }
        starved = [name for name in open_roles if shares[name] < roles[name].floor_per_loop]
        if not starved:
            return {**fixed, **shares}
        for name in starved:
            fixed[name] = roles[name].floor_per_loop
