"""Xiangqi (Chinese chess) for the GPT-plays-chess article: ICCS tokenizer, legal moves, scripted games.

ICCS writes a move as 4 characters, from-file from-rank to-file to-rank, files a–i (left to right from
Red's side) and ranks 0–9 (Red's back rank is 0); e.g. 'h2e2' is 炮二平五. Su's script (bert4keras
`task_language_model_chinese_chess.py`) uses the 20-token vocabulary [PAD] + '0123456789abcdefghi',
token 0 doubling as the start token, and writes a game as [0] + the characters of its moves, with no
separators: a game of n moves is 4n + 1 tokens.

The board is a flat list of 90 squares, index = 9·rank + file; pieces are +1…+7 for Red and −1…−7
for Black (king, advisor, elephant, horse, rook, cannon, pawn). `legal_moves` generates pseudo-legal
moves from precomputed square tables, then drops the moves that leave the mover's king attacked; the
attack test looks outward from the king (rook/king lines incl. the flying-general rule, cannon screens,
horse legs, pawns), so it costs one scan, not a full move generation. Written for this project; the
`cchess` package (LGPL) is only a test-time oracle.

Policies for the scripted corpus (spec §5.6): 'random' (a uniform legal move) and 'greedy' (the
material-greedy one-ply policy: capture the most valuable piece, ties at random; otherwise a random
legal move). A side with no legal move loses (checkmate and stalemate both lose in Xiangqi).

References:
  https://kexue.fm/archives/7877
"""
from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["VOCAB", "PAD_ID", "START_ID", "encode", "decode", "encode_game", "Position", "initial_position",
           "from_fen", "to_fen", "legal_moves", "pseudo_legal_moves", "in_check", "make_move", "move_to_iccs",
           "iccs_to_move", "parse_move", "PIECE_VALUES", "policy_move", "play_game", "generate_games",
           "INITIAL_FEN", "KING", "ADVISOR", "ELEPHANT", "HORSE", "ROOK", "CANNON", "PAWN"]

VOCAB = ("[PAD]",) + tuple("0123456789abcdefghi")
PAD_ID = START_ID = 0
_CHAR_TO_ID = {c: i for i, c in enumerate(VOCAB) if i > 0}
INITIAL_FEN = "rnbakabnr/9/1c5c1/p1p1p1p1p/9/9/P1P1P1P1P/1C5C1/9/RNBAKABNR w"
KING, ADVISOR, ELEPHANT, HORSE, ROOK, CANNON, PAWN = range(1, 8)
_FEN_LETTERS = {"k": KING, "a": ADVISOR, "b": ELEPHANT, "n": HORSE, "h": HORSE, "r": ROOK, "c": CANNON,
                "p": PAWN, "e": ELEPHANT}
_LETTER = {KING: "k", ADVISOR: "a", ELEPHANT: "b", HORSE: "n", ROOK: "r", CANNON: "c", PAWN: "p"}
# Captured-material values for the greedy policy (a common convention; the king never gets captured).
PIECE_VALUES = {KING: 100.0, ROOK: 9.0, CANNON: 4.5, HORSE: 4.0, ELEPHANT: 2.0, ADVISOR: 2.0, PAWN: 1.0}


# ----------------------------------------------------------------------------- tokenizer
def _check_iccs_text(text: str, name: str) -> None:
    if not isinstance(text, str) or len(text) % 4:
        raise ValueError(f"`{name}` must be a string of 4-character ICCS moves; got {text!r}")
    for i in range(0, len(text), 4):
        mv = text[i:i + 4]
        if not (mv[0] in "abcdefghi" and mv[1] in "0123456789" and mv[2] in "abcdefghi" and mv[3] in "0123456789"):
            raise ValueError(f"`{name}` must be a string of 4-character ICCS moves (file a-i, rank 0-9); "
                             f"got {mv!r} at character {i}")


def encode(moves: str | list[str]) -> np.ndarray:
    """[START] + one token per ICCS character: a game of n moves gives 4n + 1 int32 ids."""
    text = "".join(moves) if isinstance(moves, (list, tuple)) else moves
    _check_iccs_text(text, "moves")
    return np.array([START_ID] + [_CHAR_TO_ID[c] for c in text], np.int32)


encode_game = encode


def decode(ids) -> str:
    """Inverse of `encode`: ids (with or without the leading start token; trailing padding dropped)."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"`ids` must be a 1-D integer array; got shape {ids.shape} dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= len(VOCAB)):
        raise ValueError(f"`ids` must be token ids in [0, {len(VOCAB)}); got values in [{ids.min()}, {ids.max()}]")
    if ids.size and ids[0] == START_ID:
        ids = ids[1:]
    nz = np.nonzero(ids)[0]
    ids = ids[:nz[-1] + 1] if nz.size else ids[:0]
    if np.any(ids == PAD_ID):
        raise ValueError(f"`ids` must not hold [PAD] between characters; got {ids.tolist()}")
    return "".join(VOCAB[i] for i in ids)


# ----------------------------------------------------------------------------- board
@dataclasses.dataclass
class Position:
    """board: 90 ints (index 9·rank + file, >0 Red, <0 Black); side: +1 Red to move, −1 Black."""
    board: list
    side: int

    def copy(self) -> "Position":
        return Position(list(self.board), self.side)


def from_fen(fen: str) -> Position:
    """Parses the board and side fields of a FEN ('w'/'r' = Red, 'b' = Black)."""
    if not isinstance(fen, str) or not fen.strip():
        raise ValueError(f"`fen` must be a FEN string; got {fen!r}")
    parts = fen.split()
    rows = parts[0].split("/")
    if len(rows) != 10:
        raise ValueError(f"`fen` must have 10 ranks; got {fen!r}")
    board = [0] * 90
    for i, row in enumerate(rows):
        rank, file = 9 - i, 0
        for ch in row:
            if ch.isdigit():
                file += int(ch)
            elif ch.lower() in _FEN_LETTERS and file < 9:
                board[9 * rank + file] = _FEN_LETTERS[ch.lower()] * (1 if ch.isupper() else -1)
                file += 1
            else:
                raise ValueError(f"`fen` must use pieces kabnrcp and digits; got {ch!r} in {fen!r}")
        if file != 9:
            raise ValueError(f"`fen` must have 9 files per rank; got {row!r} in {fen!r}")
    side = -1 if len(parts) > 1 and parts[1] == "b" else 1
    return Position(board, side)


def to_fen(pos: Position) -> str:
    rows = []
    for rank in range(9, -1, -1):
        row, empty = "", 0
        for file in range(9):
            p = pos.board[9 * rank + file]
            if p == 0:
                empty += 1
                continue
            if empty:
                row, empty = row + str(empty), 0
            row += _LETTER[abs(p)].upper() if p > 0 else _LETTER[abs(p)]
        rows.append(row + (str(empty) if empty else ""))
    return "/".join(rows) + (" w" if pos.side == 1 else " b")


def initial_position() -> Position:
    return from_fen(INITIAL_FEN)


def move_to_iccs(move: tuple[int, int]) -> str:
    a, b = move
    return f"{'abcdefghi'[a % 9]}{a // 9}{'abcdefghi'[b % 9]}{b // 9}"


def iccs_to_move(iccs: str) -> tuple[int, int]:
    _check_iccs_text(iccs, "iccs")
    if len(iccs) != 4:
        raise ValueError(f"`iccs` must be one 4-character move; got {iccs!r}")
    return (9 * int(iccs[1]) + "abcdefghi".index(iccs[0]), 9 * int(iccs[3]) + "abcdefghi".index(iccs[2]))


# Precomputed tables ------------------------------------------------------------
def _sq(r, f):
    return 9 * r + f if 0 <= r <= 9 and 0 <= f <= 8 else None


_RAYS = []
for _r in range(10):
    for _f in range(9):
        rays = []
        for _dr, _df in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            ray, k = [], 1
            while _sq(_r + _dr * k, _f + _df * k) is not None:
                ray.append(_sq(_r + _dr * k, _f + _df * k))
                k += 1
            rays.append(ray)
        _RAYS.append(rays)
# Horse moves from a square: (target, leg); the leg is the orthogonal neighbour in the long direction.
_HORSE = [[(_sq(r + dr, f + df), _sq(r + (dr // 2 if abs(dr) == 2 else 0), f + (df // 2 if abs(df) == 2 else 0)))
           for dr, df in ((2, 1), (2, -1), (-2, 1), (-2, -1), (1, 2), (1, -2), (-1, 2), (-1, -2))
           if _sq(r + dr, f + df) is not None] for r in range(10) for f in range(9)]
# Horses that attack a square: (horse square, leg square), the leg being next to the horse.
_HORSE_ATTACKERS = [[(_sq(r + dr, f + df), _sq(r + dr - (np.sign(dr) if abs(dr) == 2 else 0),
                                               f + df - (np.sign(df) if abs(df) == 2 else 0)))
                     for dr, df in ((2, 1), (2, -1), (-2, 1), (-2, -1), (1, 2), (1, -2), (-1, 2), (-1, -2))
                     if _sq(r + dr, f + df) is not None] for r in range(10) for f in range(9)]
_IN_PALACE = {1: {9 * r + f for r in range(0, 3) for f in range(3, 6)},
              -1: {9 * r + f for r in range(7, 10) for f in range(3, 6)}}
_KING_STEPS = {c: [[t for t in (_sq(s // 9 + dr, s % 9 + df) for dr, df in ((1, 0), (-1, 0), (0, 1), (0, -1)))
                    if t is not None and t in _IN_PALACE[c]] for s in range(90)] for c in (1, -1)}
_ADVISOR_STEPS = {c: [[t for t in (_sq(s // 9 + dr, s % 9 + df) for dr, df in ((1, 1), (1, -1), (-1, 1), (-1, -1)))
                       if t is not None and t in _IN_PALACE[c]] for s in range(90)] for c in (1, -1)}
_OWN_HALF = {1: set(range(0, 45)), -1: set(range(45, 90))}
_ELEPHANT_STEPS = {c: [[(_sq(s // 9 + dr, s % 9 + df), _sq(s // 9 + dr // 2, s % 9 + df // 2))
                        for dr, df in ((2, 2), (2, -2), (-2, 2), (-2, -2))
                        if _sq(s // 9 + dr, s % 9 + df) is not None and _sq(s // 9 + dr, s % 9 + df) in _OWN_HALF[c]]
                       for s in range(90)] for c in (1, -1)}


def _pawn_steps(s: int, c: int) -> list[int]:
    r, f = divmod(s, 9)
    out = [t for t in [_sq(r + c, f)] if t is not None]
    if (c == 1 and r >= 5) or (c == -1 and r <= 4):  # across the river: also sideways
        out += [t for t in (_sq(r, f - 1), _sq(r, f + 1)) if t is not None]
    return out


_PAWN_STEPS = {c: [_pawn_steps(s, c) for s in range(90)] for c in (1, -1)}


def pseudo_legal_moves(pos: Position) -> list[tuple[int, int]]:
    """Moves by the piece rules (incl. blocking legs/eyes and cannon screens), ignoring own-king safety."""
    b, c = pos.board, pos.side
    out = []
    for s in range(90):
        p = b[s] * c
        if p <= 0:
            continue
        if p == ROOK or p == CANNON:
            for ray in _RAYS[s]:
                screened = False
                for t in ray:
                    q = b[t]
                    if not screened:
                        if q == 0:
                            out.append((s, t))
                        else:
                            if p == ROOK:
                                if q * c < 0:
                                    out.append((s, t))
                                break
                            screened = True
                    elif q != 0:
                        if q * c < 0:
                            out.append((s, t))
                        break
        elif p == HORSE:
            for t, leg in _HORSE[s]:
                if b[leg] == 0 and b[t] * c <= 0:
                    out.append((s, t))
        elif p == PAWN:
            out.extend((s, t) for t in _PAWN_STEPS[c][s] if b[t] * c <= 0)
        elif p == ELEPHANT:
            out.extend((s, t) for t, eye in _ELEPHANT_STEPS[c][s] if b[eye] == 0 and b[t] * c <= 0)
        elif p == ADVISOR:
            out.extend((s, t) for t in _ADVISOR_STEPS[c][s] if b[t] * c <= 0)
        else:  # KING
            out.extend((s, t) for t in _KING_STEPS[c][s] if b[t] * c <= 0)
    return out


def _attacked(b: list, s: int, by: int) -> bool:
    """Whether side `by` attacks square s (a rook or, along a file, the king — the flying general — on the
    first piece of a line; a cannon on the second; horses whose leg is free; pawns)."""
    for d, ray in enumerate(_RAYS[s]):
        first = True
        for t in ray:
            q = b[t]
            if q == 0:
                continue
            if first:
                if q == by * ROOK or (d < 2 and q == by * KING):
                    return True
                first = False
            else:
                if q == by * CANNON:
                    return True
                break
    for h, leg in _HORSE_ATTACKERS[s]:
        if b[h] == by * HORSE and b[leg] == 0:
            return True
    r, f = divmod(s, 9)
    back = _sq(r - by, f)  # a pawn of `by` moves by +by ranks, so it attacks from rank r − by
    if back is not None and b[back] == by * PAWN:
        return True
    if (by == 1 and r >= 5) or (by == -1 and r <= 4):  # squares beyond `by`'s river: sideways attacks
        for t in (_sq(r, f - 1), _sq(r, f + 1)):
            if t is not None and b[t] == by * PAWN:
                return True
    return False


def _king_square(b: list, c: int) -> int:
    for s in _IN_PALACE[c]:
        if b[s] == c * KING:
            return s
    raise ValueError(f"`pos` must have a {'Red' if c == 1 else 'Black'} king in its palace; got none")


def in_check(pos: Position) -> bool:
    """Whether the side to move has its king attacked (incl. facing the other king on an open file)."""
    return _attacked(pos.board, _king_square(pos.board, pos.side), -pos.side)


def legal_moves(pos: Position) -> list[tuple[int, int]]:
    """Pseudo-legal moves that do not leave the mover's king attacked (or facing the other king)."""
    b, c = pos.board, pos.side
    king = _king_square(b, c)
    out = []
    for s, t in pseudo_legal_moves(pos):
        captured, piece = b[t], b[s]
        b[t], b[s] = piece, 0
        safe = not _attacked(b, t if s == king else king, -c)
        b[s], b[t] = piece, captured
        if safe:
            out.append((s, t))
    return out


def make_move(pos: Position, move: tuple[int, int]) -> Position:
    """The position after `move` (not validated; see `parse_move`)."""
    new = pos.copy()
    s, t = move
    new.board[t], new.board[s] = new.board[s], 0
    new.side = -pos.side
    return new


def parse_move(pos: Position, iccs: str) -> tuple[int, int]:
    """The move of an ICCS string, checked to be legal in `pos`."""
    move = iccs_to_move(iccs)
    if move not in legal_moves(pos):
        raise ValueError(f"`iccs` must be a legal move in {to_fen(pos)}; got {iccs!r}")
    return move


# ----------------------------------------------------------------------------- scripted games
POLICIES = ("random", "greedy")


def policy_move(pos: Position, policy: str, rng: np.random.Generator, moves=None) -> tuple[int, int] | None:
    """A move of the scripted `policy` ('random' or 'greedy'); None when there is no legal move."""
    if policy not in POLICIES:
        raise ValueError(f"`policy` must be one of {POLICIES}; got {policy!r}")
    moves = legal_moves(pos) if moves is None else moves
    if not moves:
        return None
    if policy == "greedy":
        values = [PIECE_VALUES[abs(pos.board[t])] if pos.board[t] else 0.0 for _, t in moves]
        best = max(values)
        if best > 0:
            moves = [m for m, v in zip(moves, values) if v == best]
    return moves[int(rng.integers(len(moves)))]


def greedy_choices(pos: Position, moves=None) -> list[tuple[int, int]]:
    """The moves the greedy policy chooses among (the best captures, or every legal move)."""
    moves = legal_moves(pos) if moves is None else moves
    values = [PIECE_VALUES[abs(pos.board[t])] if pos.board[t] else 0.0 for _, t in moves]
    best = max(values) if values else 0.0
    return [m for m, v in zip(moves, values) if v == best] if best > 0 else list(moves)


def play_game(red: str, black: str, *, rng: np.random.Generator, max_plies: int = 80) -> tuple[list[str], float]:
    """One game between scripted policies. Returns (ICCS moves, result for Red: 1 win, 0.5 draw, 0 loss);
    a game reaching `max_plies` is a draw."""
    pos, moves = initial_position(), []
    for _ in range(max_plies):
        mv = policy_move(pos, red if pos.side == 1 else black, rng)
        if mv is None:
            return moves, (0.0 if pos.side == 1 else 1.0)
        moves.append(move_to_iccs(mv))
        pos = make_move(pos, mv)
    if not legal_moves(pos):
        return moves, (0.0 if pos.side == 1 else 1.0)
    return moves, 0.5


def generate_games(n: int, *, policy: str = "greedy", seed: int = 0, max_plies: int = 80
                   ) -> list[list[str]]:
    """n seeded games of `policy` against itself, each a list of ICCS moves (at most max_plies)."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"`n` must be a positive int; got {n!r}")
    if policy not in POLICIES:
        raise ValueError(f"`policy` must be one of {POLICIES}; got {policy!r}")
    rng = np.random.default_rng(seed)
    return [play_game(policy, policy, rng=rng, max_plies=max_plies)[0] for _ in range(int(n))]
