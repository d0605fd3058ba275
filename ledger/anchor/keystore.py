"""The anchoring key: an encrypted keystore v3 file and its password file, both mode 0600.

The keystore alone is useless without the password file, so the two can be backed up apart.
Both files are created exclusively (an existing key is never overwritten) and refused on load
when group or other users could read them.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from ledger.keyfile import KeyFileError, create_private, read_private

from .errors import ChainError

# eth-account's own default. Decrypting costs ~1.5 s at this n; tests pass a smaller one.
DEFAULT_SCRYPT_N = 2**18


def create_keystore(
    keystore_path: Path, password_path: Path, *, password: str | None = None, scrypt_n: int = DEFAULT_SCRYPT_N
) -> str:
    """Generate a new account, save it encrypted, and return its checksummed address.

    A random password is generated unless one is given. Raises ``ChainError`` if either file
    already exists.
    """
    for path in (keystore_path, password_path):
        if path.exists():
            raise ChainError(f"{path} already exists: refusing to overwrite a key")
    password = password if password is not None else secrets.token_urlsafe(32)
    account: LocalAccount = Account.create()
    keyfile = Account.encrypt(account.key, password, kdf="scrypt", iterations=scrypt_n)
    _write_private(password_path, password + "\n")
    try:
        _write_private(keystore_path, json.dumps(keyfile, indent=2) + "\n")
    except BaseException:
        password_path.unlink(missing_ok=True)
        raise
    return str(account.address)


def load_account(keystore_path: Path, password_path: Path) -> LocalAccount:
    """Decrypt the keystore with the password file; refuse files that others can read."""
    for path in (keystore_path, password_path):
        _check_private(path)
    password = password_path.read_text(encoding="utf-8").rstrip("\r\n")
    try:
        keyfile = json.loads(keystore_path.read_text(encoding="utf-8"))
        key = Account.decrypt(keyfile, password)
    except (ValueError, KeyError, TypeError) as exc:
        # eth-keyfile says "MAC mismatch" for a wrong password; never echo the password itself.
        raise ChainError(f"cannot decrypt {keystore_path} with {password_path}: {exc}") from None
    account: LocalAccount = Account.from_key(key)
    return account


def _check_private(path: Path) -> None:
    try:
        read_private(path, "file")
    except KeyFileError as exc:
        raise ChainError(str(exc)) from None


def _write_private(path: Path, text: str) -> None:
    if not create_private(path, text.encode("utf-8")):
        raise ChainError(f"{path} already exists: refusing to overwrite a key")
