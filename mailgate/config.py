"""Typed configuration from one TOML file; the only module that reads config files.

Every section is a frozen dataclass whose fields are the keys of that section, with their
defaults (the embedded defaults of SPEC §8). Loading checks each key against its field:
an unknown key, a wrong type or an impossible value raises ConfigError naming the key, so
`mailgate check-config` and every command can say exactly what is wrong.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

ENV_VAR = "MAILGATE_CONFIG"


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and key at fault."""


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = ""  # empty: sqlite:///<state_dir>/mailgate.db


@dataclass(frozen=True)
class StorageConfig:
    state_dir: str = "./var"
    attachments_dir: str = ""  # empty: <state_dir>/attachments


@dataclass(frozen=True)
class SmtpConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8025
    lmtp: bool = False
    max_message_size: int = 26214400
    max_recipients: int = 100  # per message; more RCPTs get 452 4.5.3
    max_sessions: int = 100  # connections at once; more get 421 4.7.0 and are closed
    max_bytes_in_flight: int = 52428800  # message bodies being received at once, all sessions together
    tls_cert: str = ""
    tls_key: str = ""
    hostname: str = ""  # name in the greeting; empty: the machine's name


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    public_url: str = ""


@dataclass(frozen=True)
class TicketsConfig:
    key_prefix: str = "SD"
    support_addresses: tuple[str, ...] = ("support@example.com",)
    close_phrases: tuple[str, ...] = (
        "close", "please close", "close it", "can be closed", "you can close",
        "you can close the ticket", "please close the ticket", "close ticket",
        "schließen", "bitte schließen", "bitte schliessen", "kann geschlossen werden",
        "ticket schließen", "bitte ticket schließen",
    )


@dataclass(frozen=True)
class OutboundConfig:
    from_address: str = ""  # empty: the first support address
    from_name: str = "Service Desk"
    message_id_domain: str = ""  # empty: the domain of from_address
    relay_host: str = ""  # empty: write to <state_dir>/outbox (a Maildir)
    relay_port: int = 25
    relay_tls: str = "none"  # none | starttls | tls
    relay_username: str = ""
    relay_password: str = ""
    relay_auth: str = "password"  # password | oauth2 (SPEC §10): relay_username with an OAuth2 token
    relay_oauth_provider: str = ""
    relay_oauth_tenant: str = "organizations"
    relay_oauth_client_id: str = ""
    relay_oauth_client_secret: str = ""
    relay_oauth_scope: str = ""
    relay_oauth_token_url: str = ""
    relay_oauth_device_url: str = ""
    relay_oauth_authorize_url: str = ""
    max_age_hours: float = 48.0
    retry_initial_seconds: float = 60.0  # first backoff after a passing failure; doubles, with jitter
    retry_max_seconds: float = 3600.0
    timeout_seconds: float = 60.0  # per SMTP command to the relay
    poll_seconds: float = 5.0  # how often the sender looks for due mail when nothing woke it
    loop_replies_per_hour: int = 10  # an address whose replies became this many comments on one ticket in an hour loops
    max_per_recipient_per_hour: int = 6  # mail to an address that loops, at most; the rest waits; 0: off
    templates_dir: str = ""  # templates here override the built-in ones of the same name

    @property
    def relay_oauth(self) -> "OAuthSettings":
        return OAuthSettings(**{f: getattr(self, f"relay_oauth_{f}") for f in OAUTH_FIELDS})


@dataclass(frozen=True)
class LifecycleConfig:
    resolved_close_days: float = 50
    clarification_reminder_days: tuple[float, ...] = (10, 20, 30)
    clarification_close_days: float = 40
    interval_seconds: float = 300


@dataclass(frozen=True)
class PolicyConfig:
    require_authenticated_sender: bool = False
    trusted_authserv_id: str = ""
    max_new_tickets_per_sender_per_hour: int = 20
    max_notices_per_hour: int = 20  # unknown-sender notices in all, from every instance; 0: none


@dataclass(frozen=True)
class SecurityConfig:
    secret: str = ""  # empty: generated once and kept in <state_dir>/secret


@dataclass(frozen=True)
class ProcessingConfig:
    max_attempts: int = 3  # a message failing this often is quarantined
    threads: int = 1  # messages worked at the same time, each in a thread (in each process)
    processes: int = 1  # N >= 1: in N worker processes under the budget; 0: in the daemon, unbounded
    budget_seconds: float = 5.0  # CPU seconds one message may cost; more: its worker is killed
    budget_memory_factor: int = 3  # × smtp.max_message_size (+ 48 MiB): the memory a worker may add


@dataclass(frozen=True)
class LimitsConfig:
    """What one message may hold; a message over a limit is quarantined (kept, reprocessable
    once the limit is raised), so hostile mail cannot exhaust memory, disk or the database."""

    max_attachments: int = 250
    max_decoded_bytes: int = 104857600  # all attachments together, decoded
    max_headers: int = 1000
    max_header_bytes: int = 102400  # one header, folded lines together


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "INFO"


@dataclass(frozen=True)
class ImapConfig:
    host: str = "127.0.0.1"
    port: int = 143
    tls: bool = False
    starttls: bool = True
    ca_file: str = ""
    verify_certificate: bool = True
    username: str = ""
    password: str = ""
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    poll_seconds: float = 60
    idle: bool = True  # false: poll even when the server offers IDLE
    name: str = ""
    auth: str = "password"  # password | oauth2 (SPEC §10)
    oauth_provider: str = ""
    oauth_tenant: str = "organizations"
    oauth_client_id: str = ""
    oauth_client_secret: str = ""
    oauth_scope: str = ""
    oauth_token_url: str = ""
    oauth_device_url: str = ""
    oauth_authorize_url: str = ""

    @property
    def label(self) -> str:
        """The mailbox's name in logs and /healthz."""
        return self.name or f"{self.username}@{self.host}"

    @property
    def oauth(self) -> "OAuthSettings":
        return OAuthSettings(**{f: getattr(self, f"oauth_{f}") for f in OAUTH_FIELDS})


@dataclass(frozen=True)
class OAuthSettings:
    """The oauth_* keys of a mailbox, or the relay_oauth_* keys of [outbound] (SPEC §10)."""

    provider: str = ""  # microsoft | google | custom
    tenant: str = "organizations"  # microsoft only
    client_id: str = ""
    client_secret: str = ""
    scope: str = ""  # empty: the provider's IMAP or SMTP scope, with offline access
    token_url: str = ""  # custom only
    device_url: str = ""  # custom only
    authorize_url: str = ""  # custom only: sign in with a browser (authorisation code) instead of a device code


OAUTH_FIELDS = tuple(f.name for f in dataclasses.fields(OAuthSettings))
OAUTH_PROVIDERS = ("microsoft", "google", "custom")


@dataclass(frozen=True)
class OperationsConfig:
    alert_address: str = ""  # told by mail when an OAuth2 token stops working; empty: the log only


@dataclass(frozen=True)
class DeskConfig:
    """One more desk beside the default one of [tickets] (SPEC §11): its own addresses, key
    prefix, sender and templates."""

    name: str = ""
    addresses: tuple[str, ...] = ()  # mail to these (and their +tag sub-addresses) is this desk's
    key_prefix: str = ""
    from_address: str = ""  # empty: the first of its addresses
    display_name: str = ""  # the name its mail comes from; empty: outbound.from_name
    templates_dir: str = ""  # templates here override outbound.templates_dir and the built-in ones
    language: str = "en"  # for contacts who gave no language (and agents who gave none)


@dataclass(frozen=True)
class AgentConfig:
    """A support agent: the HTTP API's bearer token, region and rights, and the agent's mail."""

    name: str = ""
    token: str = ""  # the bearer token; long and random (e.g. `openssl rand -hex 32`)
    region: str = ""  # sees confidential tickets of organisations in this region only
    read_only: bool = False  # may list and show, not change
    email: str = ""  # the agent's mail address: mail from it may act as the agent once proven
    notify: bool = False  # mailed new tickets and customers' comments of the desks served
    desks: tuple[str, ...] = ()  # the desks the agent serves; empty: all
    language: str = ""  # of the agent's mail; empty: the desk's


@dataclass(frozen=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    tickets: TicketsConfig = field(default_factory=TicketsConfig)
    outbound: OutboundConfig = field(default_factory=OutboundConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    operations: OperationsConfig = field(default_factory=OperationsConfig)
    imap: tuple[ImapConfig, ...] = ()
    agents: tuple[AgentConfig, ...] = ()
    desks: tuple[DeskConfig, ...] = ()
    source: str = ""  # the file it came from, "" for the embedded defaults

    # Derived places: one definition, used by every module.
    @property
    def state_dir(self) -> Path:
        return Path(self.storage.state_dir)

    @property
    def attachments_dir(self) -> Path:
        return Path(self.storage.attachments_dir or self.state_dir / "attachments")

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{(self.state_dir / 'mailgate.db').resolve()}"

    @property
    def support_addresses(self) -> frozenset[str]:
        """Every desk's addresses: [tickets] support_addresses and those of [[desks]]."""
        return frozenset(a.lower() for a in (*self.tickets.support_addresses,
                                             *(a for desk in self.desks for a in desk.addresses)))

    @property
    def from_address(self) -> str:
        return self.outbound.from_address or self.tickets.support_addresses[0]

    @property
    def message_id_domain(self) -> str:
        return self.outbound.message_id_domain or self.from_address.rpartition("@")[2]


# --- loading ---------------------------------------------------------------------------


def load(path: str | os.PathLike | None = None) -> Config:
    """The config from PATH, else from $MAILGATE_CONFIG, else the embedded defaults."""
    path = path or os.environ.get(ENV_VAR) or None
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        config = from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return dataclasses.replace(config, source=str(path))


def from_dict(data: dict) -> Config:
    """Build a Config from parsed TOML, checking every key."""
    sections = {}
    for name, value in data.items():
        spec = _SECTIONS.get(name)
        if spec is None:
            raise ConfigError(f"unknown section [{name}]")
        if name in _TABLE_ARRAYS:
            if not isinstance(value, list):
                raise ConfigError(f"[[{name}]] must be an array of tables")
            sections[name] = tuple(_section(_TABLE_ARRAYS[name], f"{name}[{i}]", v) for i, v in enumerate(value))
        else:
            sections[name] = _section(spec, name, value)
    config = Config(**sections)
    _check(config)
    return config


_TABLE_ARRAYS = {"imap": ImapConfig, "agents": AgentConfig, "desks": DeskConfig}
_SECTIONS = {name: hint for name, hint in typing.get_type_hints(Config).items() if name != "source"}


def _section(cls, name: str, values) -> object:
    if not isinstance(values, dict):
        raise ConfigError(f"[{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown key {name}.{key}")
        kwargs[key] = _coerce(f"{name}.{key}", hints[key], value)
    return cls(**kwargs)


def _coerce(key: str, hint, value):
    """Check VALUE against the field's type; tuples come from TOML arrays."""
    origin = typing.get_origin(hint)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected an array")
        return tuple(_coerce(key, item, v) for v in value)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a field type this loader does not know
        raise TypeError(hint)
    if not ok:
        shown = "a value that is not shown" if _is_secret(key) else repr(value)
        raise ConfigError(f"{key}: expected {_TYPE_NAMES[hint]}, got {shown}")
    return value


def _is_secret(key: str) -> bool:
    """Keys whose values never appear in a message (check-config's output may be pasted)."""
    return key.rsplit(".", 1)[-1].endswith(("password", "secret", "token"))


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check(config: Config) -> None:
    """Rules that go beyond types: ports, addresses, choices."""
    for key, port in (("smtp.port", config.smtp.port), ("http.port", config.http.port),
                      ("outbound.relay_port", config.outbound.relay_port)):
        if not 0 <= port <= 65535:
            raise ConfigError(f"{key}: {port} is not a port number")
    if config.smtp.max_message_size < 1024:
        raise ConfigError("smtp.max_message_size: must be at least 1024 bytes")
    if min(config.smtp.max_recipients, config.smtp.max_sessions) < 1:
        raise ConfigError("smtp: max_recipients and max_sessions must be at least 1")
    if config.smtp.max_bytes_in_flight < config.smtp.max_message_size:
        raise ConfigError("smtp.max_bytes_in_flight: must be at least smtp.max_message_size")
    if not config.tickets.support_addresses:
        raise ConfigError("tickets.support_addresses: at least one address is needed")
    for address in config.tickets.support_addresses:
        if not _looks_like_address(address):
            raise ConfigError(f"tickets.support_addresses: {address!r} is not an e-mail address")
    if config.outbound.from_address and not _looks_like_address(config.outbound.from_address):
        raise ConfigError(f"outbound.from_address: {config.outbound.from_address!r} is not an e-mail address")
    if not config.tickets.key_prefix.isalnum() or not config.tickets.key_prefix.isascii():
        raise ConfigError("tickets.key_prefix: letters and digits only")
    if config.outbound.relay_tls not in ("none", "starttls", "tls"):
        raise ConfigError("outbound.relay_tls: one of none, starttls, tls")
    for key in ("max_age_hours", "retry_initial_seconds", "retry_max_seconds", "timeout_seconds", "poll_seconds"):
        if getattr(config.outbound, key) <= 0:
            raise ConfigError(f"outbound.{key}: must be more than 0")
    if config.http.public_url and not config.http.public_url.startswith(("http://", "https://")):
        raise ConfigError("http.public_url: must start with http:// or https://")
    if config.outbound.templates_dir and not Path(config.outbound.templates_dir).is_dir():
        raise ConfigError(f"outbound.templates_dir: {config.outbound.templates_dir!r} is not a directory")
    if bool(config.smtp.tls_cert) != bool(config.smtp.tls_key):
        raise ConfigError("smtp.tls_key: tls_cert and tls_key go together")
    if config.database.url and not config.database.url.startswith(("sqlite", "postgresql")):
        raise ConfigError("database.url: only sqlite:/// and postgresql+psycopg:// are supported")
    if min(config.processing.max_attempts, config.processing.threads, config.processing.budget_memory_factor) < 1:
        raise ConfigError("processing: max_attempts, threads and budget_memory_factor must be at least 1")
    if config.processing.processes < 0:
        raise ConfigError("processing.processes: 0 (in the daemon) or more")
    if config.processing.budget_seconds <= 0:
        raise ConfigError("processing.budget_seconds: must be more than 0")
    if config.logging.level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("logging.level: one of DEBUG, INFO, WARNING, ERROR")
    if config.policy.require_authenticated_sender and not config.policy.trusted_authserv_id:
        raise ConfigError("policy.trusted_authserv_id: needed when require_authenticated_sender is on")
    _check_desks(config)
    _check_agents(config)
    _check_oauth("outbound.relay_", config.outbound.relay_auth, config.outbound.relay_oauth)
    if config.outbound.relay_auth == "oauth2" and not config.outbound.relay_username:
        raise ConfigError("outbound.relay_username: the mailbox to send as is needed with relay_auth = oauth2")
    alert = config.operations.alert_address
    if alert and not _looks_like_address(alert):
        raise ConfigError(f"operations.alert_address: {alert!r} is not an e-mail address")
    for i, box in enumerate(config.imap):
        _check_imap(f"imap[{i}]", box)
        _check_oauth(f"imap[{i}].", box.auth, box.oauth)
        if box.auth == "oauth2" and box.label == "relay":
            raise ConfigError(f"imap[{i}].name: \"relay\" names the relay's OAuth2 account; choose another name")
        if [b.label for b in config.imap].index(box.label) != i:
            raise ConfigError(f"imap[{i}].name: {box.label!r} names two mailboxes; give each its own name")


DEFAULT_DESK = "default"  # the name of the desk of [tickets]
LANGUAGES = ("en", "de")


def _check_desks(config: Config) -> None:
    """[[desks]]: names, prefixes and addresses each belong to one desk only."""
    names, prefixes = {DEFAULT_DESK}, {config.tickets.key_prefix.upper(): "tickets.key_prefix"}
    addresses = {a.lower(): "tickets.support_addresses" for a in config.tickets.support_addresses}
    for i, desk in enumerate(config.desks):
        key = f"desks[{i}]"
        if not desk.name.strip():
            raise ConfigError(f"{key}.name: missing")
        if desk.name in names:
            taken = "names the desk of [tickets]" if desk.name == DEFAULT_DESK else "names two desks"
            raise ConfigError(f"{key}.name: {desk.name!r} {taken}; give each desk its own name")
        names.add(desk.name)
        if not desk.key_prefix.isalnum() or not desk.key_prefix.isascii():
            raise ConfigError(f"{key}.key_prefix: letters and digits only")
        if desk.key_prefix.upper() in prefixes:
            raise ConfigError(f"{key}.key_prefix: {desk.key_prefix!r} is taken by {prefixes[desk.key_prefix.upper()]}")
        prefixes[desk.key_prefix.upper()] = f"{key}.key_prefix"
        if not desk.addresses:
            raise ConfigError(f"{key}.addresses: at least one address is needed")
        for address in desk.addresses:
            if not _looks_like_address(address) or "+" in address:
                raise ConfigError(f"{key}.addresses: {address!r} is not an e-mail address (without a +tag)")
            if address.lower() in addresses:
                raise ConfigError(f"{key}.addresses: {address!r} is taken by {addresses[address.lower()]}")
            addresses[address.lower()] = f"{key}.addresses"
        if desk.from_address and not _looks_like_address(desk.from_address):
            raise ConfigError(f"{key}.from_address: {desk.from_address!r} is not an e-mail address")
        if desk.templates_dir and not Path(desk.templates_dir).is_dir():
            raise ConfigError(f"{key}.templates_dir: {desk.templates_dir!r} is not a directory")
        if desk.language not in LANGUAGES:
            raise ConfigError(f"{key}.language: one of {', '.join(LANGUAGES)}")


def _check_agents(config: Config) -> None:
    desks = {DEFAULT_DESK, *(d.name for d in config.desks)}
    for i, agent in enumerate(config.agents):
        key = f"agents[{i}]"
        if not agent.name.strip():
            raise ConfigError(f"{key}.name: missing")
        if len(agent.token) < 16 and (agent.token or not agent.email):
            # An agent who works by mail only needs no token: "" never opens the API.
            raise ConfigError(f"{key}.token: at least 16 characters")
        if agent.email and not _looks_like_address(agent.email):
            raise ConfigError(f"{key}.email: {agent.email!r} is not an e-mail address")
        if agent.email and agent.email.lower() in config.support_addresses:
            raise ConfigError(f"{key}.email: {agent.email!r} is a support address (mail to it would loop)")
        if agent.notify and not agent.email:
            raise ConfigError(f"{key}.notify: needs the agent's email")
        for desk in agent.desks:
            if desk not in desks:
                raise ConfigError(f"{key}.desks: no desk {desk!r}; the desks: {', '.join(sorted(desks))}")
        if agent.language and agent.language not in LANGUAGES:
            raise ConfigError(f"{key}.language: one of {', '.join(LANGUAGES)}, or empty for the desk's")
    tokens = [a.token for a in config.agents if a.token]
    if len(set(tokens)) != len(tokens):
        raise ConfigError("agents: two agents share one token")
    emails = [a.email.lower() for a in config.agents if a.email]
    if len(set(emails)) != len(emails):
        raise ConfigError("agents: two agents share one email; mail from it could not tell them apart")
    names = [a.name for a in config.agents]
    if len(set(names)) != len(names):
        raise ConfigError("agents: two agents share one name")


def _check_imap(key: str, box: ImapConfig) -> None:
    """One [[imap]] table: where to connect, as whom, which folders."""
    if not box.host.strip():
        raise ConfigError(f"{key}.host: missing")
    if not 1 <= box.port <= 65535:
        raise ConfigError(f"{key}.port: {box.port} is not a port number")
    if not box.username:
        raise ConfigError(f"{key}.username: missing")
    if not box.folder.strip():
        raise ConfigError(f"{key}.folder: missing")
    if box.processed_folder and not box.processed_folder.strip():
        raise ConfigError(f"{key}.processed_folder: a folder name, or empty to expunge")
    if box.processed_folder == box.folder:
        raise ConfigError(f"{key}.processed_folder: must differ from folder (empty: expunge instead)")
    if box.poll_seconds <= 0:
        raise ConfigError(f"{key}.poll_seconds: must be more than 0")


def _check_oauth(prefix: str, auth: str, oauth: OAuthSettings) -> None:
    """The auth key and, with oauth2, the oauth_* keys of a mailbox or the relay."""
    if auth not in ("password", "oauth2"):
        raise ConfigError(f"{prefix}auth: one of password, oauth2")
    if auth != "oauth2":
        return
    if oauth.provider not in OAUTH_PROVIDERS:
        raise ConfigError(f"{prefix}oauth_provider: one of {', '.join(OAUTH_PROVIDERS)} (needed with auth = oauth2)")
    if not oauth.client_id.strip():
        raise ConfigError(f"{prefix}oauth_client_id: missing (the application's client id)")
    if oauth.provider == "microsoft" and not oauth.tenant.strip():
        raise ConfigError(f"{prefix}oauth_tenant: a tenant id or domain, or organizations")
    for name in ("token_url", "device_url", "authorize_url"):
        url = getattr(oauth, name)
        if oauth.provider != "custom" and url:
            raise ConfigError(f"{prefix}oauth_{name}: only for oauth_provider = custom")
        if url and not url.startswith(("https://", "http://")):
            raise ConfigError(f"{prefix}oauth_{name}: an http(s) URL")
    if oauth.provider == "custom" and not oauth.token_url:
        raise ConfigError(f"{prefix}oauth_token_url: needed with oauth_provider = custom")
    if oauth.provider == "custom" and not (oauth.device_url or oauth.authorize_url):
        raise ConfigError(f"{prefix}oauth_device_url: needed with oauth_provider = custom (or oauth_authorize_url)")


def _looks_like_address(address: str) -> bool:
    local, at, domain = address.partition("@")
    return bool(local and at and "." in domain and " " not in address)
