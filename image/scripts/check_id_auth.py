#!/usr/bin/env python3
"""Independent check of `image id-block` output, used by image/tests/measure_crosscheck.rs.

Runs in the sev-snp-measure virtual environment and uses only Python's
`cryptography` package (not our Rust code) to:

  verify  ID_BLOCK_B64 ID_AUTH_B64 [--author] [--id-key-pem P] [--author-key-pem P]
          [--ssm PROPS]
      parse the ID block and ID auth per the SNP firmware ABI (56860 §8.18 and
      chapter 10), verify the ECDSA P-384/SHA-384 signature over the 96-byte ID
      block with the embedded ID key and, with --author, the signature over the
      1028-byte ID key with the embedded author key; check the embedded keys
      equal the PEM files' public keys; with --ssm (the `id-block=...,id-auth=...`
      line printed by snp-create-id-block for the same keys and digest), check its
      ID block is byte-identical to ours and its ID auth equals ours outside the
      (randomized) signature values, and verify its signatures too.
      Prints the parsed fields as JSON.

  make-sec1 PATH
      write a new P-384 key in SEC1 ("EC PRIVATE KEY") PEM form.
"""

import argparse
import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

ID_BLOCK_LEN = 96
ID_AUTH_LEN = 4096
SIG_LEN = 512
KEY_LEN = 1028
PARAM = 72
OFF_ID_BLOCK_SIG = 0x40
OFF_ID_KEY = 0x240
OFF_ID_KEY_SIG = 0x680
OFF_AUTHOR_KEY = 0x880
OFF_END = 0xC84


def u32(b, at):
    return int.from_bytes(b[at:at + 4], "little")


def le_int(b):
    return int.from_bytes(b, "little")


def parse_key(field):
    assert len(field) == KEY_LEN
    curve = u32(field, 0)
    if curve != 2:
        raise SystemExit(f"public key curve {curve} != 2 (P-384)")
    qx, qy = field[4:4 + PARAM], field[4 + PARAM:4 + 2 * PARAM]
    if any(qx[48:]) or any(qy[48:]) or any(field[4 + 2 * PARAM:]):
        raise SystemExit("public key padding/reserved bytes are not zero")
    nums = ec.EllipticCurvePublicNumbers(le_int(qx), le_int(qy), ec.SECP384R1())
    return nums.public_key()


def check_sig(pub, msg, field, what):
    r, s = field[0:PARAM], field[PARAM:2 * PARAM]
    if any(r[48:]) or any(s[48:]) or any(field[2 * PARAM:]):
        raise SystemExit(f"{what}: padding/reserved bytes are not zero")
    der = utils.encode_dss_signature(le_int(r), le_int(s))
    try:
        pub.verify(der, msg, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SystemExit(f"{what}: signature does not verify")


def pem_public(path):
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    return key.public_key().public_numbers()


def verify(block, auth, author, id_pem, author_pem):
    if len(block) != ID_BLOCK_LEN or len(auth) != ID_AUTH_LEN:
        raise SystemExit(f"lengths {len(block)}/{len(auth)}, expected 96/4096")
    if u32(auth, 0) != 1:
        raise SystemExit("ID_KEY_ALGO != 1")
    if any(auth[8:OFF_ID_BLOCK_SIG]) or any(auth[OFF_ID_KEY + KEY_LEN:OFF_ID_KEY_SIG]) \
            or any(auth[OFF_END:]):
        raise SystemExit("reserved ID auth bytes are not zero")
    id_field = auth[OFF_ID_KEY:OFF_ID_KEY + KEY_LEN]
    id_pub = parse_key(id_field)
    check_sig(id_pub, block, auth[OFF_ID_BLOCK_SIG:OFF_ID_BLOCK_SIG + SIG_LEN], "ID_BLOCK_SIG")
    if id_pem and pem_public(id_pem) != id_pub.public_numbers():
        raise SystemExit("ID_KEY is not the public key of " + id_pem)
    out = {
        "ld": block[0:48].hex(),
        "family_id": block[48:64].hex(),
        "image_id": block[64:80].hex(),
        "version": u32(block, 80),
        "guest_svn": u32(block, 84),
        "policy": int.from_bytes(block[88:96], "little"),
        "id_key_algo": u32(auth, 0),
        "auth_key_algo": u32(auth, 4),
        "id_key_digest": hashlib.sha384(id_field).hexdigest(),
        "author_key_digest": None,
    }
    if author:
        if u32(auth, 4) != 1:
            raise SystemExit("AUTH_KEY_ALGO != 1")
        author_field = auth[OFF_AUTHOR_KEY:OFF_AUTHOR_KEY + KEY_LEN]
        author_pub = parse_key(author_field)
        check_sig(author_pub, id_field, auth[OFF_ID_KEY_SIG:OFF_ID_KEY_SIG + SIG_LEN],
                  "ID_KEY_SIG")
        if author_pem and pem_public(author_pem) != author_pub.public_numbers():
            raise SystemExit("AUTHOR_KEY is not the public key of " + author_pem)
        out["author_key_digest"] = hashlib.sha384(author_field).hexdigest()
    elif u32(auth, 4) != 0 or any(auth[OFF_ID_KEY_SIG:]):
        raise SystemExit("author fields are set but no author key was expected")
    return out


def props(line):
    fields = dict(p.split("=", 1) for p in line.strip().split(","))
    return base64.b64decode(fields["id-block"]), base64.b64decode(fields["id-auth"])


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify")
    v.add_argument("id_block")
    v.add_argument("id_auth")
    v.add_argument("--author", action="store_true")
    v.add_argument("--id-key-pem")
    v.add_argument("--author-key-pem")
    v.add_argument("--ssm")
    m = sub.add_parser("make-sec1")
    m.add_argument("path")
    a = ap.parse_args()

    if a.cmd == "make-sec1":
        key = ec.generate_private_key(ec.SECP384R1())
        pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
        with open(a.path, "wb") as f:
            f.write(pem)
        return 0

    block, auth = base64.b64decode(a.id_block), base64.b64decode(a.id_auth)
    out = verify(block, auth, a.author, a.id_key_pem, a.author_key_pem)
    if a.ssm:
        s_block, s_auth = props(a.ssm.splitlines()[0])
        if s_block != block:
            raise SystemExit("snp-create-id-block's ID block differs from ours:\n"
                             f"  ssm  {s_block.hex()}\n  ours {block.hex()}")
        sig_ranges = [(OFF_ID_BLOCK_SIG, OFF_ID_BLOCK_SIG + 2 * PARAM),
                      (OFF_ID_KEY_SIG, OFF_ID_KEY_SIG + 2 * PARAM)]
        for i in range(ID_AUTH_LEN):
            if any(lo <= i < hi for lo, hi in sig_ranges):
                continue
            if s_auth[i] != auth[i]:
                raise SystemExit(f"ID auth differs from snp-create-id-block's at {i:#x}")
        verify(s_block, s_auth, True, a.id_key_pem, a.author_key_pem)
        out["ssm_structure_identical"] = True
    json.dump(out, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
