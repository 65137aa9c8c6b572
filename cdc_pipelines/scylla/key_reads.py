"""Re-reading source rows by primary key, batched where CQL allows it.

One request per key is cheap for the client and expensive for the server: every request
pays the coordinator's fixed cost. Where the keys differ in one column that CQL lets us
restrict with ``IN`` (a partition-key column, or the last clustering column) and agree on
the others, a single ``… AND col IN ?`` request reads up to :data:`IN_BATCH` of them.
Rows coming back are matched to the keys asked for by that one column's value, compared
exactly (see :func:`match_value`); keys whose column cannot be compared exactly are read
one by one, as before.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, NamedTuple

from cassandra import ConsistencyLevel
from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.util import Date

from cdc_pipelines.config import ColumnSpec, TableSpec
from cdc_pipelines.cqltypes import CqlType
from cdc_pipelines.errors import ReconcileError, ServiceError
from cdc_pipelines.replicated_table import ReplicatedTable
from cdc_pipelines.ring.slices import TokenRange, cql_token_bounds
from cdc_pipelines.rows.layout import version_columns, written_columns
from cdc_pipelines.rows.mask import mask_row
from cdc_pipelines.scylla.reader import NO_VERSION
from cdc_pipelines.scylla.session import quote_cql

DEFAULT_CONCURRENCY = 32
IN_CONCURRENCY = 8
SCAN_WINDOW = 8  # ranges a token-ordered scan reads ahead: their first pages wait in memory
IN_BATCH = 100
INTEGER_TYPES = frozenset({"bigint", "int", "smallint", "tinyint", "varint"})
TEXT_TYPES = frozenset({"text", "ascii", "varchar"})
BATCHABLE_TYPES = (
    INTEGER_TYPES
    | TEXT_TYPES
    | {
        "uuid",
        "timeuuid",
        "blob",
        "boolean",
        "inet",
        "date",
        "timestamp",
    }
)
EPOCH = dt.datetime(1970, 1, 1)
EPOCH_DATE = dt.date(1970, 1, 1)
MS = 1000

Key = tuple[object, ...]


class SourceRow(NamedTuple):  # a tuple: built for every row a scan reads
    """A source row re-read by key, in ``upsert_layout`` order (version last, in µs).

    Timestamps are aware (UTC); ready to hand to ``plan_repair`` as an upsert.
    """

    values: tuple[object, ...]

    @property
    def version(self) -> int:
        return int(self.values[-1])  # type: ignore[call-overload]


class NotExact(ValueError):
    """The value cannot be matched exactly against what the server returns."""


def _utc_naive(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is None:
        return value
    return value.astimezone(dt.UTC).replace(tzinfo=None)


def _micros(value: dt.datetime) -> int:
    delta = _utc_naive(value) - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def match_value(value: object, cql: CqlType, *, returned: bool = False) -> object:
    """``value`` in a form where a key asked for and the row the server returns compare equal.

    ``returned`` marks a value read back from the driver: its timestamps are whole
    milliseconds, rounded to the nearest µs by the driver's float arithmetic. A value asked
    for that the server would store or compare differently (a timestamp below the
    millisecond, an IPv4-mapped IPv6 address, a type the driver hands back in another shape)
    raises :class:`NotExact`.
    """
    name = cql.name
    if name in INTEGER_TYPES and isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if name in TEXT_TYPES and isinstance(value, str):
        return value
    if name in ("uuid", "timeuuid") and isinstance(value, uuid.UUID):
        return value
    if name == "blob" and isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if name == "boolean" and isinstance(value, bool):
        return value
    if name == "inet" and isinstance(value, str | ipaddress.IPv4Address | ipaddress.IPv6Address):
        address = ipaddress.ip_address(str(value))
        # The server compares an IPv4-mapped IPv6 address equal to the IPv4 one and folds
        # them into one IN entry, though they are two keys.
        if returned or not (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped):
            return address
    if name == "date":
        if isinstance(value, Date):
            return int(value.days_from_epoch)
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            return (value - EPOCH_DATE).days
    if name == "timestamp" and isinstance(value, dt.datetime):
        micros = _micros(value)
        if returned:
            return (micros + MS // 2) // MS
        if micros % MS == 0:
            return micros // MS
    raise NotExact(f"{cql} value {value!r}")


def cql_key_value(value: object) -> object:
    """A key value as the driver binds it (it binds inet from text, not ipaddress objects)."""
    if type(value).__module__ == "ipaddress":
        return str(value)
    return value


def _whole_ms(value: dt.datetime) -> dt.datetime:
    """A driver timestamp on the millisecond it stands for: CQL stores milliseconds, and the
    driver's float arithmetic lands a few µs off them far from 1970."""
    if value.tzinfo is None and value.microsecond % MS == 0:  # the usual case: on it already
        return value
    micros = _micros(value)
    if micros % MS == 0:
        return value
    try:
        return value + dt.timedelta(microseconds=(micros + MS // 2) // MS * MS - micros)
    except OverflowError:  # within a millisecond of the end of datetime's range
        return value


def _aware(value: object, cql: CqlType) -> object:
    """The driver's naive timestamps are UTC; repair requires them aware (and exact)."""
    if value is None:
        return None
    if cql.name == "timestamp" and isinstance(value, dt.datetime):
        exact = _whole_ms(value)
        return exact if exact.tzinfo is not None else exact.replace(tzinfo=dt.UTC)
    if cql.name in ("list", "set") and cql.params[0].name == "timestamp":
        return [_aware(v, cql.params[0]) for v in value]  # type: ignore[attr-defined]
    return value


def _row_values(row: object) -> list[object]:
    if isinstance(row, Mapping):
        return list(row.values())
    return list(row)  # type: ignore[call-overload]


@dataclass(frozen=True)
class _Plan:
    """Which key column varies in the ``IN`` requests, and the keys each request reads."""

    varying: int
    groups: dict[tuple[str, ...], list[int]]  # other columns' values (by repr) → key indexes
    singles: list[int]  # keys read one by one


def _varying_positions(table: TableSpec) -> list[int]:
    """Key columns CQL lets an ``IN`` restrict while the others are fixed by ``=``."""
    positions = list(range(len(table.partition_key)))
    if table.clustering_key:
        positions.append(len(table.primary_key) - 1)
    types = [table.column(n).cql_type for n in table.primary_key]
    return [p for p in positions if types[p].name in BATCHABLE_TYPES]


def _plan(table: TableSpec, keys: Sequence[Key]) -> _Plan | None:
    types = [table.column(n).cql_type for n in table.primary_key]
    best: _Plan | None = None
    for varying in _varying_positions(table):
        groups: dict[tuple[str, ...], list[int]] = {}
        singles: list[int] = []
        for index, key in enumerate(keys):
            try:
                match_value(cql_key_value(key[varying]), types[varying])
            except NotExact:
                singles.append(index)
                continue
            others = tuple(repr(v) for i, v in enumerate(key) if i != varying)
            groups.setdefault(others, []).append(index)
        plan = _Plan(varying, groups, singles)
        if best is None or _requests(plan) < _requests(best):
            best = plan
    return best


def _requests(plan: _Plan) -> int:
    return len(plan.singles) + sum(-(-len(g) // IN_BATCH) for g in plan.groups.values())


def _storable(table: TableSpec, key: Key) -> bool:
    """Whether every timestamp in ``key`` is whole milliseconds, as CQL stores them."""
    for value, name in zip(key, table.primary_key, strict=True):
        timestamp = table.column(name).cql_type.name == "timestamp"
        if timestamp and isinstance(value, dt.datetime) and value.microsecond % MS:
            return False
    return True


class _Statements:
    def __init__(self, table: TableSpec, mask_salt: bytes | None) -> None:
        self.table, self.mask_salt = table, mask_salt
        self.columns: list[ColumnSpec] = list(written_columns(table))
        self.names = [c.name for c in self.columns]
        stamped = [c.name for c in version_columns(table)]
        selected = [quote_cql(c.name) for c in self.columns] + [
            f"WRITETIME({quote_cql(n)})" for n in stamped
        ]
        # CQL has no composition library: every name is quoted by quote_cql, every value bound.
        relation = f"{quote_cql(table.keyspace)}.{quote_cql(table.table)}"
        self.selected, self.relation = selected, relation
        self.select = f"SELECT {', '.join(selected)} FROM {relation} WHERE "
        self.positions = {c.name: i for i, c in enumerate(self.columns)}
        # Only timestamps (alone or in a list or set) differ from the driver's values.
        self._timestamped = [
            (i, c.cql_type)
            for i, c in enumerate(self.columns)
            if c.cql_type.name == "timestamp"
            or (c.cql_type.name in ("list", "set") and c.cql_type.params[0].name == "timestamp")
        ]

    def point(self) -> str:
        return self.select + " AND ".join(f"{quote_cql(n)} = ?" for n in self.table.primary_key)

    def batched(self, varying: int) -> str:
        return self.select + " AND ".join(
            f"{quote_cql(n)} IN ?" if i == varying else f"{quote_cql(n)} = ?"
            for i, n in enumerate(self.table.primary_key)
        )

    def source_row(self, row: object) -> SourceRow:
        values = _row_values(row)
        width = len(self.columns)
        stamps = [int(s) for s in values[width:] if s is not None]  # type: ignore[call-overload]
        version = max(stamps) if stamps else NO_VERSION
        data = values[:width]
        for position, cql in self._timestamped:
            data[position] = _aware(data[position], cql)
        if self.table.mask:
            data = mask_row(self.table, self.names, data, self.mask_salt)
        return SourceRow((*data, version))


def _execute(
    session: Session,
    cql: str,
    arguments: list[tuple[Any, ...]],
    concurrency: int,
    consistency: str | None = None,
) -> Any:
    if not arguments:
        return []
    statement = session.prepare(cql)
    if consistency is not None:
        statement.consistency_level = getattr(ConsistencyLevel, consistency)
    return execute_concurrent_with_args(
        session, statement, arguments, concurrency=concurrency, raise_on_first_error=True
    )


def read_source_rows(
    session: Session,
    replicated: ReplicatedTable,
    keys: Sequence[Key],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    consistency: str | None = None,
) -> list[SourceRow | None]:
    """Re-read ``keys`` from the source; one entry per key (None: the row does not exist).

    The version is the largest ``WRITETIME`` of the row's non-key single-cell columns
    (``NO_VERSION`` when none is set; multi-cell collections and counters have no cell write
    time). ``consistency`` (a CQL level name) overrides the session's for these reads.
    """
    table = replicated.spec
    for key in keys:
        if len(key) != len(table.primary_key) or any(v is None for v in key):
            raise ReconcileError(
                f"table {table.source}: key {key!r} does not give every primary-key column "
                f"({', '.join(table.primary_key)})"
            )
    statements = _Statements(table, replicated.mask_salt)
    # A key below the millisecond names no source row (CQL timestamps are milliseconds), yet
    # the driver would bind it truncated and read another row: such keys are not read.
    storable = [i for i, key in enumerate(keys) if _storable(table, key)]
    if len(storable) < len(keys):
        found = read_source_rows(
            session,
            replicated,
            [keys[i] for i in storable],
            concurrency=concurrency,
            consistency=consistency,
        )
        rows_of: list[SourceRow | None] = [None] * len(keys)
        for i, row in zip(storable, found, strict=True):
            rows_of[i] = row
        return rows_of
    plan = _plan(table, keys)
    singles = list(range(len(keys))) if plan is None else plan.singles
    rows: list[SourceRow | None] = [None] * len(keys)
    try:
        if plan is not None and plan.groups:
            _read_batched(session, statements, plan, keys, rows, consistency)
        outcomes = _execute(
            session,
            statements.point(),
            [tuple(cql_key_value(v) for v in keys[i]) for i in singles],
            concurrency,
            consistency,
        )
        for index, outcome in zip(singles, outcomes, strict=True):
            found = list(outcome.result_or_exc)
            rows[index] = statements.source_row(found[0]) if found else None
    except Exception as exc:  # the driver raises many unrelated types
        raise ServiceError(
            f"table {table.source}: re-reading {len(keys)} keys from the source failed "
            f"({type(exc).__name__}: {exc}); check the CQL endpoint and the declaration"
        ) from None
    return rows


def _read_batched(
    session: Session,
    statements: _Statements,
    plan: _Plan,
    keys: Sequence[Key],
    rows: list[SourceRow | None],
    consistency: str | None = None,
) -> None:
    table = statements.table
    varying = plan.varying
    cql = table.column(table.primary_key[varying]).cql_type
    requests: list[tuple[Any, ...]] = []
    wanted: list[dict[object, list[int]]] = []
    for indexes in plan.groups.values():
        for start in range(0, len(indexes), IN_BATCH):
            chunk = indexes[start : start + IN_BATCH]
            by_value: dict[object, list[int]] = {}
            values: list[object] = []
            for index in chunk:
                value = cql_key_value(keys[index][varying])
                matched = match_value(value, cql)
                if matched not in by_value:
                    values.append(value)
                by_value.setdefault(matched, []).append(index)
            fixed = [cql_key_value(v) for i, v in enumerate(keys[chunk[0]]) if i != varying]
            requests.append((*fixed[:varying], values, *fixed[varying:]))
            wanted.append(by_value)
    position = statements.positions[table.primary_key[varying]]
    outcomes = _execute(session, statements.batched(varying), requests, IN_CONCURRENCY, consistency)
    for by_value, outcome in zip(wanted, outcomes, strict=True):
        for found in outcome.result_or_exc:
            row = statements.source_row(found)
            matched = match_value(row.values[position], cql, returned=True)
            for index in by_value.get(matched, ()):
                rows[index] = row


RANGE_MATCHABLE_TYPES = frozenset(
    {
        *INTEGER_TYPES,
        *TEXT_TYPES,
        "uuid",
        "timeuuid",
        "blob",
        "boolean",
        "inet",
        "date",
        "timestamp",
    }
)


def range_matchable(table: TableSpec) -> bool:
    """Whether every key column's values can be matched between a scan and a key asked for."""
    return all(table.column(n).cql_type.name in RANGE_MATCHABLE_TYPES for n in table.primary_key)


class SourceRange:
    """Every source row of some token ranges, found by key: a re-read of many keys at the
    cost of one scan (verification chooses it when most of a slice's rows are candidates).

    Keys the scan cannot match exactly (see :func:`match_value`) are re-read by key.
    """

    def __init__(
        self,
        session: Session,
        replicated: ReplicatedTable,
        ranges: Sequence[TokenRange],
        *,
        concurrency: int = IN_CONCURRENCY,
    ) -> None:
        self.session, self.replicated = session, replicated
        table = replicated.spec
        statements = _Statements(table, replicated.mask_salt)
        self._types = key_types(table)
        positions = [statements.positions[n] for n in table.primary_key]
        partition = ", ".join(quote_cql(n) for n in table.partition_key)
        scan = statements.select + f"token({partition}) > ? AND token({partition}) <= ?"
        # Rows are kept as the driver returned them and converted only when a key is read:
        # most re-scans are for a share of the range's rows, not all of them.
        self._statements = statements
        self._found: dict[tuple[object, ...], object] = {}
        try:
            outcomes = _execute(session, scan, cql_token_bounds(ranges), concurrency)
            plain = _plain_key_types(self._types) is not None
            key_of = _tuple_key(positions)
            for outcome in outcomes:
                for found in outcome.result_or_exc:
                    if plain and type(found) is tuple:  # the driver's values are their own match
                        self._found[key_of(found)] = found
                        continue
                    values = _row_values(found)
                    if plain:
                        self._found[tuple([values[p] for p in positions])] = found
                        continue
                    try:
                        key = tuple(
                            match_value(_aware(values[p], cql), cql, returned=True)
                            for p, cql in zip(positions, self._types, strict=True)
                        )
                    except NotExact:  # found by its own re-read, if it is a candidate
                        continue
                    self._found[key] = found
        except Exception as exc:  # the driver raises many unrelated types
            raise ServiceError(
                f"table {table.source}: re-reading a token range from the source failed "
                f"({type(exc).__name__}: {exc}); check the CQL endpoint"
            ) from None

    def read(self, keys: Sequence[Key]) -> list[SourceRow | None]:
        """One entry per key, like :func:`read_source_rows` (None: the row does not exist)."""
        found: list[SourceRow | None] = [None] * len(keys)
        unmatched: list[int] = []
        table = self.replicated.spec
        for index, key in enumerate(keys):
            wanted = matched_key(table, key, self._types)
            if wanted is None:
                unmatched.append(index)
            else:
                raw = self._found.get(wanted)
                found[index] = None if raw is None else self._statements.source_row(raw)
        if unmatched:
            reread = read_source_rows(self.session, self.replicated, [keys[i] for i in unmatched])
            for index, row in zip(unmatched, reread, strict=True):
                found[index] = row
        return found


def _tuple_key(positions: Sequence[int]) -> Callable[[tuple[object, ...]], tuple[object, ...]]:
    """The key of a driver row (a tuple) as a tuple of its values at ``positions``."""
    if len(positions) == 1:
        (position,) = positions
        return lambda row: (row[position],)
    return itemgetter(*positions)  # a tuple for two positions or more


def existing_keys(
    session: Session,
    replicated: ReplicatedTable,
    ranges: Sequence[TokenRange],
    *,
    concurrency: int = IN_CONCURRENCY,
    consistency: str | None = None,
) -> set[tuple[object, ...]]:
    """The keys (matched as :func:`match_value` returns them) of every row in the ranges: a
    scan of the key columns alone, to tell which of many keys still exist."""
    table = replicated.spec
    types = [table.column(n).cql_type for n in table.primary_key]
    partition = ", ".join(quote_cql(n) for n in table.partition_key)
    scan = (
        f"SELECT {', '.join(quote_cql(n) for n in table.primary_key)} "
        f"FROM {quote_cql(table.keyspace)}.{quote_cql(table.table)} "
        f"WHERE token({partition}) > ? AND token({partition}) <= ?"
    )
    found: set[tuple[object, ...]] = set()
    plain = _plain_key_types(types)
    try:
        bounds = cql_token_bounds(ranges)
        for outcome in _execute(session, scan, bounds, concurrency, consistency):
            if plain is not None:  # the driver's values are their own match
                found.update(tuple(row) for row in outcome.result_or_exc)
                continue
            for row in outcome.result_or_exc:
                values = _row_values(row)
                try:
                    found.add(
                        tuple(
                            match_value(_aware(v, cql), cql, returned=True)
                            for v, cql in zip(values, types, strict=True)
                        )
                    )
                except NotExact:  # such keys are checked by a re-read of their own
                    continue
    except Exception as exc:  # the driver raises many unrelated types
        raise ServiceError(
            f"table {table.source}: scanning the keys of a token range failed "
            f"({type(exc).__name__}: {exc}); check the CQL endpoint"
        ) from None
    return found


def key_types(table: TableSpec) -> tuple[CqlType, ...]:
    """The CQL types of the primary-key columns, in key order."""
    return tuple(table.column(n).cql_type for n in table.primary_key)


def matched_key(
    table: TableSpec, key: Key, types: Sequence[CqlType] | None = None
) -> tuple[object, ...] | None:
    """``key`` as a scan's rows are matched (None: it cannot be matched exactly); pass the
    table's ``key_types`` when matching many keys."""
    types = types or key_types(table)
    plain = _plain_key_types(types)
    if plain is not None and all(type(v) is t for v, t in zip(key, plain, strict=True)):
        return tuple(key)
    try:
        return tuple(match_value(cql_key_value(v), cql) for v, cql in zip(key, types, strict=True))
    except NotExact:
        return None


PLAIN_KEY_TYPES: dict[str, type] = {
    **dict.fromkeys(INTEGER_TYPES, int),
    **dict.fromkeys(TEXT_TYPES, str),
    "uuid": uuid.UUID,
    "timeuuid": uuid.UUID,
    "boolean": bool,
}
"""CQL types whose driver value is its own match (see :func:`match_value`), by Python type."""


def _plain_key_types(types: Sequence[CqlType]) -> tuple[type, ...] | None:
    """The Python types of a key whose columns are all :data:`PLAIN_KEY_TYPES` (else None)."""
    plain = tuple(PLAIN_KEY_TYPES.get(cql.name) for cql in types)
    return None if None in plain else plain  # type: ignore[return-value]


def scan_rows(
    session: Session,
    replicated: ReplicatedTable,
    ranges: Sequence[TokenRange],
    *,
    concurrency: int = SCAN_WINDOW,
) -> Iterator[tuple[int, SourceRow]]:
    """Every row of the (non-wrapping, ring-ordered) ``ranges`` with its partition token, in
    token order, as :func:`read_source_rows` returns rows; a partition's static values
    without a clustering row are no row of the table and are left out. At most
    ``concurrency`` ranges are started ahead of the one being read, so memory follows that
    many first pages (``scylla.fetch_size`` rows each), not the ranges' size."""
    shapes = ScannedShapes(replicated)
    for token, values in scan_raw_rows(session, replicated, ranges, concurrency=concurrency):
        yield token, shapes.source_row(values)


class ScannedShapes:
    """Rows of :func:`scan_raw_rows` as a re-read gives them (:meth:`source_row`) or as the
    diff's scan does (:meth:`canonical_values`, in ``CanonicalSchema.column_names`` order)."""

    def __init__(self, replicated: ReplicatedTable) -> None:
        self._statements = statements = _Statements(replicated.spec, replicated.mask_salt)
        schema = replicated.canonical
        self._width = len(statements.columns)
        self._picks = [
            statements.positions[name]
            for name in schema.column_names
            if name != schema.version_column
        ]

    def source_row(self, values: Sequence[object]) -> SourceRow:
        """The row as :func:`read_source_rows` returns it."""
        return self._statements.source_row(values)

    def canonical_values(self, values: Sequence[object]) -> tuple[object, ...]:
        """The row's canonical values, version last, as the diff's scan reads them (masked,
        values as the driver gives them)."""
        statements, width = self._statements, self._width
        stamps = [s for s in values[width:] if s is not None]
        version = max(stamps) if stamps else NO_VERSION  # type: ignore[type-var]
        data: Sequence[object] = values[:width]
        if statements.table.mask:
            data = mask_row(statements.table, statements.names, list(data), statements.mask_salt)
        return (*[data[p] for p in self._picks], version)


def scan_raw_rows(
    session: Session,
    replicated: ReplicatedTable,
    ranges: Sequence[TokenRange],
    *,
    concurrency: int = SCAN_WINDOW,
) -> Iterator[tuple[int, Sequence[object]]]:
    """:func:`scan_rows`'s rows as the driver returns them (the selected columns, then each
    version column's write time): convert them with :class:`ScannedShapes`."""
    table = replicated.spec
    statements = _Statements(table, replicated.mask_salt)
    partition = ", ".join(quote_cql(n) for n in table.partition_key)
    token = f"token({partition})"
    scan = (
        f"SELECT {', '.join([*statements.selected, token])} FROM {statements.relation} "
        f"WHERE {token} > ? AND {token} <= ?"
    )
    width = len(statements.selected)
    clustering = [statements.positions[n] for n in table.clustering_key]
    try:
        statement = session.prepare(scan)
        statement.fetch_size = replicated.scylla.fetch_size
        for rows in _in_order(session, statement, cql_token_bounds(ranges), concurrency):
            for found in rows:
                values = found if type(found) is tuple else tuple(_row_values(found))
                if any(values[p] is None for p in clustering):
                    continue  # static values only
                yield int(values[width]), values[:width]  # type: ignore[arg-type]
    except Exception as exc:  # the driver raises many unrelated types
        raise ServiceError(
            f"table {table.source}: scanning a token range of the source failed "
            f"({type(exc).__name__}: {exc}); check the CQL endpoint"
        ) from None


def _in_order(
    session: Session, statement: Any, arguments: Sequence[tuple[Any, ...]], window: int
) -> Iterator[Any]:
    """Each statement's result set in order, at most ``window`` started ahead of the one
    being read. Unlike the driver's ``execute_concurrent``, which starts the next statement
    as soon as any answers, whether or not its rows were read, this keeps memory at
    ``window`` first pages however many ranges there are."""
    waiting = iter(arguments)
    started: deque[Any] = deque()

    def start_next() -> None:
        argument = next(waiting, None)
        if argument is not None:
            started.append(session.execute_async(statement, argument))

    for _ in range(max(1, window)):
        start_next()
    while started:
        result = started.popleft().result()
        start_next()
        yield result


def count_rows(session: Session, replicated: ReplicatedTable, token_range: TokenRange) -> int:
    """The rows (CQL rows, static-only partitions included) in ``token_range``, counted by
    the server."""
    table = replicated.spec
    partition = ", ".join(quote_cql(n) for n in table.partition_key)
    cql = (
        f"SELECT COUNT(*) FROM {quote_cql(table.keyspace)}.{quote_cql(table.table)} "
        f"WHERE token({partition}) > ? AND token({partition}) <= ?"
    )
    try:
        statement = session.prepare(cql)
        return sum(
            int(session.execute(statement, bounds).one()[0])
            for bounds in cql_token_bounds([token_range])
        )
    except Exception as exc:  # the driver raises many unrelated types
        raise ServiceError(
            f"table {table.source}: counting the rows of a token range failed "
            f"({type(exc).__name__}: {exc}); check the CQL endpoint"
        ) from None
