"""Pseudonymous user ids: ``sha256("<salt>:<user_id>")`` in hex, with a secret salt read from the environment
variable ``privacy.salt_env`` (never from a config file, never a built-in default). Erasing users (the right to
be forgotten) is :mod:`adrec_spark.io.erasure`; its command is ``adrec forget-users``."""

from __future__ import annotations

import hashlib
import os

from pyspark.sql import Column
from pyspark.sql import functions as F

from adrec_spark.config import PrivacyConfig
from adrec_spark.errors import ConfigError

MIN_SALT_CHARS = 16


def pseudonymize(col: Column | str, salt: str) -> Column:
    """``sha2(salt || ':' || col, 256)`` as 64 lowercase hex characters; null stays null."""
    if not isinstance(salt, str) or not salt:
        raise ValueError("pseudonymize: 'salt' must be a non-empty string")
    c = F.col(col) if isinstance(col, str) else col
    return F.sha2(F.concat(F.lit(salt), F.lit(":"), c), 256)


def pseudonym_salt(privacy: PrivacyConfig) -> str | None:
    """The salt from the environment variable ``privacy.salt_env``.

    With ``pseudonymize_user_ids`` on, a missing or short (< 16 characters) salt is a :class:`ConfigError`:
    there is no default salt. With it off, the salt is returned when set (erasure still uses it to find
    pseudonyms written while it was on) and None otherwise.
    """
    value = os.environ.get(privacy.salt_env)
    if not privacy.pseudonymize_user_ids:
        return value or None
    if value is None:
        raise ConfigError(
            f"privacy.pseudonymize_user_ids is true but the environment variable {privacy.salt_env} is not "
            f"set: set it to a secret of at least {MIN_SALT_CHARS} characters (keep it out of config files)")
    if len(value) < MIN_SALT_CHARS:
        raise ConfigError(
            f"privacy.pseudonymize_user_ids is true but the salt in {privacy.salt_env} has {len(value)} "
            f"characters; it must have at least {MIN_SALT_CHARS}")
    return value


def pseudonym(user_id: str, salt: str) -> str:
    """The pseudonym of one id, as :func:`pseudonymize` writes it (for files read without Spark)."""
    return hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()
