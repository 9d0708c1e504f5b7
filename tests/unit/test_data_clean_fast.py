"""The fast paths of cleaning give what the plain line-by-line / regex-per-char versions give."""
import random
import re

from threadsum.data import clean as C

ATOMS = [" ", "  ", "\t", "\r", "\n", "\n\n", "\n \n", "\f", "\v", "a", "word", "x/y", ">", " > ", ">> ",
         "-----Original Message-----", "From: X", "FROM: Y", "Sent: y", "To: a; b", "Cc: c", "Subject: s",
         "On Mon, Bob wrote:", "WROTE:", "01/02/2001 10:00 AM", "1/2/01 9:00 PM", "Kay Mann", "ſ", "İ", "Ωmega",
         "--------- Forwarded by K/HOU/ECT on 01/02/2001 ----", "---", "=20", "=\n", "-- ", "*****",
         "        04/27/2001 08:00 AM", "Joe Smith\n       4/27/01 8:00 PM\nTo: K/HOU/ECT@ECT\n", "To: Kay Mann/HOU",
         "Ann Lee\n          1/2/01 9:00 PM\nTo: x\n", "From: Bo on 1/2/01 9:00\nPM\nTo: x\n", "PM", " AM "]  # '/' at the 12th character: the edge of the fast path


def _texts(n, seed=0):
    rng = random.Random(seed)
    return ["".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 30))) for _ in range(n)]


def _reference_whitespace(body):
    body = re.sub(r"[ \t\f\v\r]+", " ", body)
    body = re.sub(r" ?\n ?", "\n", body)
    return re.sub(r"\n{3,}", "\n\n", body).strip()


def _reference_segment_body(body):
    """Every line tested on its own (the fast version tests only the lines whole-body scans flag)."""
    lines = body.split("\n")
    segs = [C.Segment("own")]
    i, n = 0, len(lines)
    while i < n:
        line = lines[i]
        kind = C._starts_segment(lines, i)
        if kind is None and line.lstrip().startswith(">"):
            if segs[-1].kind != "quote":
                segs.append(C.Segment("quote"))
            segs[-1].content.append(line)
            i += 1
            continue
        if kind is None:
            if segs[-1].kind == "quote":
                segs.append(C.Segment("own"))
            segs[-1].content.append(line)
            i += 1
            continue
        seg = C.Segment(kind, marker=[line])
        i += 1
        if kind == "forward" and not line.rstrip().endswith("---") and i < n and lines[i].rstrip().endswith("---"):
            seg.marker.append(lines[i])
            i += 1
        if kind == "lotus" and not C._FROM_HDR.match(line):
            seg.marker.append(lines[i])
            i += 1
        elif kind == "lotus" and i < n and C._AMPM_LINE.match(lines[i]):
            seg.marker.append(lines[i])
            i += 1
        j = i
        while j < n and not lines[j].strip() and j - i < 4:
            j += 1
        in_list, header = False, []
        while j < n:
            h = lines[j]
            if C._HDR.match(h):
                header.append(h)
                in_list = bool(re.match(r"^\s*(To|Cc|Bcc)\s*:", h, re.I))
                j += 1
                continue
            if in_list and h.strip() and not C._LOTUS_DATE.match(h) and not C._starts_segment(lines, j):
                header.append(h)
                j += 1
                continue
            k = j
            while k < n and k - j < 6 and (not lines[k].strip() or C._LOTUS_DATE.match(lines[k])):
                k += 1
            if k > j and k < n and C._HDR.match(lines[k]):
                header.extend(x for x in lines[j:k] if x.strip())
                j = k
                continue
            break
        if header:
            seg.header = header
            i = j
        segs.append(seg)
    return [s for s in segs if s.kind != "own" or any(x.strip() for x in s.content) or s is segs[0]]


def _shape(segs):
    return [(s.kind, s.marker, s.header, s.content) for s in segs]


def test_whitespace_matches_the_plain_regexes():
    for text in _texts(4000, seed=1):
        assert C._whitespace(text) == _reference_whitespace(text), repr(text)


def test_segment_body_matches_line_by_line():
    texts = _texts(4000, seed=2)
    assert sum(len(C.segment_body(t)) > 1 for t in texts) > 1000  # the generator does produce quotes
    for text in texts:
        assert _shape(C.segment_body(text)) == _shape(_reference_segment_body(text)), repr(text)


def test_merge_stats_adds_counts_in_order():
    a, b = C.new_stats(), C.new_stats()
    a["threads"], b["threads"] = 2, 3
    a["dropped"], b["dropped"] = [{"index": 1}], [{"index": 4}]
    b["steps"]["strip_signatures"].update(chars_before=10, enabled=True)
    m = C.merge_stats(a, b)
    assert m["threads"] == 5 and m["dropped"] == [{"index": 1}, {"index": 4}]
    assert m["steps"]["strip_signatures"]["chars_before"] == 10 and m["steps"]["strip_signatures"]["enabled"] is True
    assert m["steps"]["normalize_names"]["enabled"] is False
