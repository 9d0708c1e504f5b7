"""A synthetic email-thread corpus in the exact Kaggle CSV format, with the real corpus' quirks.

Each thread follows one plot: someone asks a colleague to do something about a topic, the colleague
agrees or declines with a reason, a forward may bring in a note from outside (content found nowhere
else in the thread), colleagues chime in with small talk, and the last email states a decision.
The summary is a deterministic function of those facts, written in the corpus' house style
("The email thread discusses ..."), and every fact it states appears verbatim in the thread, so a
small model can learn to produce it by copying.

Noise that cleaning must handle: nested ``-----Original Message-----`` history duplicating earlier
emails, Lotus-Notes style ``Forwarded by`` blocks, quoted-printable artifacts (``=09``, ``=20``,
soft line breaks ``=\\n`` that split words), huge distribution lists, Enron-style names split at
commas in the ``to`` list literal, signatures, BlackBerry footers and legal disclaimers.
Lengths follow DATA.md (about 5.2 emails per thread, bodies of a few hundred words with a long
tail); detail rows are shuffled, as in copies of the real corpus that are not time-ordered.
"""
from __future__ import annotations

import csv
import email.message
import email.utils
import json
import math
import random
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

DETAILS_FILE = "email_thread_details.csv"
SUMMARIES_FILE = "email_thread_summaries.csv"
DETAILS_COLUMNS = ["thread_id", "subject", "timestamp", "from", "to", "body"]
SUMMARIES_COLUMNS = ["thread_id", "summary"]

# ----------------------------------------------------------------------------------- vocabulary
FIRST = [
    "Kim", "Jeff", "Sara", "Kay", "Mark", "Tana", "Carol", "John", "Susan", "Rod", "James", "Kevin",
    "Tracy", "Stacey", "Diane", "Melissa", "Gerald", "Bruce", "Brian", "Reagan", "Edward", "Phillip",
    "Julie", "Chris", "Laura", "Rita", "Tom", "Debbie", "Russell", "Heather", "Mary", "Paul",
    "Louise", "Greg", "Sally", "Vince", "Steve", "Andrea", "Elizabeth", "Mike",
]
LAST = [
    "Theriot", "Gossett", "Shackleton", "Mann", "Taylor", "Jones", "Clair", "Suttle", "Bailey",
    "Hayslett", "Saunders", "Howard", "Geaccone", "White", "Anderson", "Murphy", "Nemec", "Rudy",
    "Hendon", "Rorschach", "Sacks", "Love", "Ferrara", "Germany", "Wynne", "Moran", "Brackett",
    "Diamond", "Dunton", "Ogden", "Simons", "Kitchen", "Lavorato", "Beck", "Kaminski", "Kean",
    "Keohane", "Panus", "Walters", "Cobb",
]
COMPANIES = [
    "Dynegy", "El Paso", "Duke Energy", "Reliant", "Mirant", "Calpine", "PG&E", "Williams",
    "Aquila", "Sempra", "Constellation", "TXU", "Koch", "Cinergy", "Entergy",
]
EXTERNAL_DOMAINS = ["dynegy.com", "elpaso.com", "duke-energy.com", "reliant.com", "mirant.com", "calpine.com"]

# (topic phrase used in body and summary, subject line)
TOPICS = [
    ("the Master Termination Log", "Master Termination Log"),
    ("the ISDA master agreement with Dynegy", "ISDA master - Dynegy"),
    ("the credit group lunch", "Credit Group Lunch"),
    ("the EOL price file", "EOL Data"),
    ("the long form confirm for MDEA", "long form confirm/MDEA"),
    ("the NNG due diligence package", "NNG/Dynegy Due Diligence"),
    ("the Q3 gas storage forecast", "Q3 storage forecast"),
    ("the California power exposure report", "CA exposure report"),
    ("the weekly risk book review", "Risk book review"),
    ("the Transwestern capacity auction", "TW capacity auction"),
    ("the new trader password resets", "Password resets"),
    ("the Houston office move", "Office move"),
    ("the guaranty for the Calpine deal", "Calpine guaranty"),
    ("the broadband services contract", "Broadband contract"),
    ("the year-end bonus schedule", "Bonus schedule"),
    ("the pipeline imbalance statement", "Imbalance statement"),
    ("the legal review of the Mirant confirms", "Mirant confirms"),
    ("the Enron Online product launch", "EOL product launch"),
    ("the summer associate program", "Summer associates"),
    ("the West power desk staffing", "West desk staffing"),
    ("the netting agreement with Reliant", "Reliant netting"),
    ("the weather derivatives term sheet", "Weather term sheet"),
    ("the budget for the Portland office", "Portland budget"),
    ("the FERC filing on price caps", "FERC filing"),
    ("the collateral call from El Paso", "El Paso collateral"),
    ("the golf outing in Galveston", "Golf Anyone?"),
    ("the Canadian utilities list", "Canadian utilities"),
    ("the settlement offer from Hope Gas", "Hope Gas settlement"),
    ("the curve validation process", "Curve validation"),
    ("the audit of the trading systems", "Systems audit"),
]
REQUESTS = [
    "review the draft confirm", "send the updated price curves", "approve the revised credit limit",
    "set up a call with the legal team", "update the distribution list", "sign the amended agreement",
    "check the numbers in the spreadsheet", "forward the final term sheet", "book the conference room",
    "prepare the exposure summary", "confirm the attendee list", "reconcile the invoice with the deal ticket",
    "draft a reply to the counterparty", "send the executed copy to legal", "pull the volumes for last month",
    "schedule the training session", "review the redlined contract", "circulate the meeting notes",
    "get the signatures from the business unit", "look into the missing payment",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "end of day", "tomorrow morning", "next week"]
DECLINE_REASONS = [
    "the numbers are not final yet", "legal has not signed off", "the system is down for maintenance",
    "the counterparty has not sent the data", "the budget has not been approved", "the deal is still being negotiated",
    "the credit review is still pending", "the files are locked by another group", "the auditors have the originals",
    "the business unit has not given its approval",
]
EXTERNAL_ASKS = [
    "move the delivery point to Katy", "extend the payment terms to sixty days", "add a second guarantor",
    "cap the collateral at five million", "change the pricing to a monthly index", "cancel the March volumes",
    "receive the confirms by fax", "renegotiate the termination fee", "start the service in October",
    "include a force majeure clause",
]
DECISIONS = [
    "the deal will be booked under ENA", "the meeting is moved to Friday afternoon",
    "the price file will be sent daily at noon", "the confirm goes out without the arbitration language",
    "the termination is effective December 1", "the contract will be signed next Tuesday",
    "the list will be updated every Monday", "the exposure report will include the hedges",
    "the lunch is set for May 5 at noon", "the review is postponed until the audit is done",
    "the credit limit stays at ten million", "the payment will be wired on Thursday",
    "the team will use the new template", "the filing will be made on the first of the month",
    "the guaranty will be issued by Enron Corp", "the curves will be validated by the risk group",
]
SMALL_TALK = [
    "Thanks, I will take a look.", "Looping in the rest of the group for visibility.", "Any update on this?",
    "Sounds good to me.", "Let me know if you need anything else from me.", "I am out of the office tomorrow.",
    "Adding a few more people to the thread.", "Can we discuss this at the staff meeting?",
    "Good catch, thanks.", "I will be there.",
]
FILLER = [
    "We should keep the desk informed as things change.", "The market was quiet this morning.",
    "Please note that the numbers are preliminary.", "I spoke with the team about the schedule.",
    "We need to be careful with the timing on this one.", "The group has a lot on its plate this week.",
    "The attached file has the latest version.", "There are a few open items on the list.",
    "This came up in the morning meeting.", "Let us try to wrap this up before the close.",
    "The same issue came up last quarter.", "I have copied the people who need to know.",
    "The volumes look a little high to me.", "We will revisit this after the holidays.",
    "Most of the desk is traveling next week.", "The counterparty has been slow to respond.",
    "I left a voice mail but have not heard back.", "The legal team wants to see the final draft.",
    "The traders want an answer soon.", "The old process took too long.",
    "We made the same change for the East desk.", "There is no rush on the rest of it.",
    "I will be on the phone most of the afternoon.", "The report runs every night at ten.",
    "Please do not forward this outside the group.", "We can talk through the details on the call.",
]
TITLES = ["Senior Counsel", "Manager, Credit", "Director", "Analyst", "Vice President", "Paralegal", "Specialist"]
DISCLAIMER = (
    "**********************************************************************\n"
    "This e-mail is the property of Enron Corp. and/or its relevant affiliate and may contain "
    "confidential and privileged material for the sole use of the intended recipient (s). Any review, "
    "use, distribution or disclosure by others is strictly prohibited. If you are not the intended "
    "recipient (or authorized to use for the recipient), please contact the sender or reply to Enron "
    "Corp. at enron.messaging.administration@enron.com and delete all copies of the message. Thank you.\n"
    "**********************************************************************"
)
BLACKBERRY = "--------------------------\nSent from my BlackBerry Wireless Handheld (www.BlackBerry.net)"
from threadsum.errors import ConfigError


# -------------------------------------------------------------------------------------- people
@dataclass(frozen=True)
class Person:
    """A synthetic sender or recipient: name parts, whether Enron-style display names are used, and
    the e-mail domain of people outside Enron.
    """
    first: str
    last: str
    middle: str = ""
    enron_style: bool = True
    external: str = ""  # e-mail domain of people outside Enron

    @property
    def name(self) -> str:
        """How summaries name the person."""
        return f"{self.first} {self.last}"

    @property
    def userid(self) -> str:
        """The Enron-style user id: first initial and last name, upper-cased, at most 8 characters."""
        return (self.first[0] + self.last).upper()[:8]

    @property
    def display(self) -> str:
        """The ``from`` column: Enron form 'Last, First M. USERID' or 'First Last'."""
        if self.external:
            return f"{self.first} {self.last}"
        if self.enron_style:
            mid = f" {self.middle}." if self.middle else ""
            return f"{self.last}, {self.first}{mid} {self.userid}"
        return self.name

    @property
    def to_items(self) -> list[str]:
        """Entries of the ``to`` list literal: Enron names are split at the comma, as in the export."""
        if self.external:
            return [f"'{self.first} {self.last}' <{self.first.lower()}.{self.last.lower()}@{self.external}>"]
        if self.enron_style:
            mid = f" {self.middle}." if self.middle else ""
            return [self.last, f"{self.first}{mid} {self.userid[0]}{self.userid[1:].lower()}"]
        return [self.name]

    @property
    def header_name(self) -> str:
        """Name in quoted Outlook headers ('Last, First M.')."""
        mid = f" {self.middle}." if self.middle else ""
        return f"{self.last}, {self.first}{mid}"


def _person(rng: random.Random, exclude: set[str] = frozenset(), external: bool = False) -> Person:
    while True:
        first, last = rng.choice(FIRST), rng.choice(LAST)
        if f"{first} {last}" not in exclude:
            break
    middle = rng.choice("ABCDEFGHJKLMPRSTW") if rng.random() < 0.3 else ""
    return Person(first, last, middle, enron_style=rng.random() < 0.5,
                  external=rng.choice(EXTERNAL_DOMAINS) if external else "")


# ------------------------------------------------------------------------------------- threads
@dataclass
class _Mail:
    sender: Person
    to: list[Person]
    date: datetime
    subject: str
    own: str  # text written by the sender
    quote_previous: bool = True
    body: str = ""
    qp: bool = False


@dataclass
class SynthThread:
    """A synthetic thread: its emails, its reference summary and the facts the summary states."""
    thread_id: int
    subject: str
    mails: list[_Mail] = field(default_factory=list)
    summary: str = ""
    facts: dict = field(default_factory=dict)


def _words(rng: random.Random, median: float, sigma: float = 1.0, cap: int = 3000) -> int:
    return int(min(cap, max(0, rng.lognormvariate(math.log(median), sigma))))


def _filler(rng: random.Random, n_words: int) -> str:
    """Business small talk of about n_words words, in paragraphs."""
    out: list[str] = []
    count = 0
    para: list[str] = []
    while count < n_words:
        s = rng.choice(FILLER)
        para.append(s)
        count += len(s.split())
        if len(para) >= rng.randint(2, 5):
            out.append(" ".join(para))
            para = []
    if para:
        out.append(" ".join(para))
    return "\n\n".join(out)


def _wrap(text: str, width: int, rng: random.Random) -> str:
    """Hard-wrap paragraphs at about ``width`` columns, like Lotus/Outlook exports."""
    import textwrap

    lines = []
    for para in text.split("\n"):
        lines.extend(textwrap.wrap(para, width=width) or [""])
    return "\n".join(lines)


def _signoff(rng: random.Random, p: Person) -> str:
    r = rng.random()
    if r < 0.35:
        return f"\n\nThanks,\n{p.first}"
    if r < 0.55:
        return f"\n\n{p.first}"
    if r < 0.7:
        return f"\n\n-- \n{p.name}\n{rng.choice(TITLES)}\n713-853-{rng.randint(1000, 9999)}"
    if r < 0.8:
        return f"\n\n{p.first}\n{BLACKBERRY}"
    if r < 0.88:
        return f"\n\nRegards,\n{p.name}\n\n{DISCLAIMER}"
    return ""


def _fmt_sent(d: datetime) -> str:
    hour = d.hour % 12 or 12
    return f"{d.strftime('%A, %B %d, %Y')} {hour}:{d.minute:02d} {'AM' if d.hour < 12 else 'PM'}"


def _outlook_header(m: _Mail, cc: list[Person]) -> str:
    lines = [
        " -----Original Message-----",
        f"From: \t{m.sender.header_name} ",
        f"Sent:\t{_fmt_sent(m.date)}",
        "To:\t" + "; ".join(p.header_name for p in m.to),
    ]
    if cc:
        lines.append("Cc:\t" + "; ".join(p.header_name for p in cc))
    lines.append(f"Subject:\t{m.subject}")
    return "\n".join(lines)


def _lotus_forward(fwd_by: Person, when: datetime, author: Person, to: Person, subject: str, text: str) -> str:
    stamp = when.strftime("%m/%d/%Y %I:%M %p")
    return (
        f"---------------------- Forwarded by {fwd_by.first} {fwd_by.last}/HOU/ECT on {stamp} "
        f"---------------------------\n\n\n"
        f"\"{author.first} {author.last}\" <{author.first.lower()}.{author.last.lower()}@{author.external}>\n"
        f"{(when - timedelta(hours=2)).strftime('%m/%d/%Y %I:%M %p')}\n"
        f"To: {to.first} {to.last}/HOU/ECT@ECT\ncc:  \nSubject: {subject}\n\n{text}"
    )


def _qp_mangle(text: str) -> str:
    """Leave quoted-printable artifacts the way Enron exports do: =09 tabs, =20 spaces, =\\n soft breaks."""
    out = []
    for line in text.replace("\t", "=09").split("\n"):
        if line.endswith(" "):
            line = line[:-1] + "=20"
        while len(line) > 76:
            cut = 75
            while line[cut - 1] == "=" or line[cut - 2] == "=":  # never split an =XX escape
                cut -= 1
            out.append(line[:cut] + "=")
            line = line[cut:]
        out.append(line)
    return "\n".join(out)


def make_thread(thread_id: int, rng: random.Random) -> SynthThread:
    """One thread and its summary; all randomness comes from ``rng``."""
    topic, subject = rng.choice(TOPICS)
    asker = _person(rng)
    helper = _person(rng, {asker.name})
    request, day = rng.choice(REQUESTS), rng.choice(DAYS)
    agrees = rng.random() < 0.6
    reason = rng.choice(DECLINE_REASONS)
    decision = rng.choice(DECISIONS)
    has_forward = rng.random() < 0.4
    others = [_person(rng, {asker.name, helper.name}) for _ in range(rng.randint(1, 3))]
    n_chatter = min(8, int(rng.expovariate(1 / 2.4)))
    dist_list: list[Person] = []
    if rng.random() < 0.12:  # long distribution lists: median recipients 1, p90 6, max 428
        dist_list = [_person(rng) for _ in range(min(428, int(rng.lognormvariate(math.log(25), 1.0))))]

    t = SynthThread(thread_id, subject)
    date = datetime(1999, 1, 1) + timedelta(minutes=rng.randint(0, 3 * 365 * 24 * 60))

    def step() -> datetime:
        nonlocal date
        date = date + timedelta(minutes=int(rng.expovariate(1 / 180)) + 1, seconds=rng.randint(0, 59))
        return date

    # 1. the request
    greet = rng.choice([f"{helper.first},", f"Hi {helper.first},", f"{helper.first} -", ""])
    ask = (f"I wanted to follow up on {topic}. Could you please {request} by {day}?")
    own = f"{greet}\n\n{ask}\n\n{_filler(rng, _words(rng, 70, 1.1))}{_signoff(rng, asker)}".lstrip()
    t.mails.append(_Mail(asker, [helper] + others[:1] + dist_list, step(), subject, own, quote_previous=False))

    # 2. the answer
    if agrees:
        answer = f"Sure, I will {request} by {day}."
    else:
        answer = f"I can not {request} yet because {reason}."
    own = f"{asker.first},\n\n{answer}\n\n{_filler(rng, _words(rng, 45, 1.1))}{_signoff(rng, helper)}"
    t.mails.append(_Mail(helper, [asker], step(), f"RE: {subject}", own))

    # 3. a forward carrying content found nowhere else in the thread
    outsider = company = ext_ask = None
    if has_forward:
        outsider = _person(rng, external=True)
        company = rng.choice(COMPANIES)
        ext_ask = rng.choice(EXTERNAL_ASKS)
        target = others[0]
        ext_text = (f"{asker.first},\n\nOn behalf of {company}, we would like to {ext_ask}. "
                    f"{_filler(rng, _words(rng, 40))}\n\n{outsider.first} {outsider.last}\n{company}")
        note = f"{target.first}, FYI see the note below from {outsider.name} of {company}.\n\n{asker.first}"
        fwd = _lotus_forward(asker, date, outsider, asker, subject, _wrap(ext_text, 72, rng))
        t.mails.append(_Mail(asker, [target], step(), f"FW: {subject}", f"{note}\n{fwd}", quote_previous=False))

    # 4. chatter that the summary ignores
    people = [asker, helper] + others
    for _ in range(n_chatter):
        who = rng.choice(people)
        to = [p for p in people if p != who][: rng.randint(1, 3)]
        own = f"{rng.choice(SMALL_TALK)}\n\n{_filler(rng, _words(rng, 40, 1.1))}{_signoff(rng, who)}"
        t.mails.append(_Mail(who, to, step(), f"RE: {subject}", own, quote_previous=rng.random() < 0.7))

    # 5. the decision
    decider = rng.choice([asker, helper])
    other = helper if decider is asker else asker
    own = (f"{other.first},\n\nJust to close the loop: {decision}.\n\n"
           f"{_filler(rng, _words(rng, 30, 1.1))}{_signoff(rng, decider)}")
    t.mails.append(_Mail(decider, [other] + others[:1], step(), f"RE: {subject}", own))

    # bodies: own text + nested quoted history of the previous emails (as Outlook exports it)
    for i, m in enumerate(t.mails):
        body = m.own
        if m.quote_previous and i > 0:
            prev = t.mails[i - 1]
            cc = others if rng.random() < 0.3 else []
            body = f"{body}\n\n{_outlook_header(prev, cc)}\n\n{prev.body}"
        m.body = body
    for m in t.mails:
        if rng.random() < 0.08:
            m.qp = True
            m.body = _qp_mangle(m.body)

    # the summary: a deterministic function of the facts above, in the corpus' house style
    parts = [f"The email thread discusses {topic}.", f"{asker.name} asks {helper.name} to {request} by {day}."]
    parts.append(f"{helper.name} agrees to do it." if agrees else f"{helper.name} declines because {reason}.")
    if has_forward:
        parts.append(f"{asker.name} forwards a note from {outsider.name} of {company}, "
                     f"who would like to {ext_ask}.")
    parts.append(f"{decider.name} confirms that {decision}.")
    t.summary = " ".join(parts)
    t.facts = {"topic": topic, "asker": asker.name, "helper": helper.name, "request": request, "day": day,
               "agrees": agrees, "reason": None if agrees else reason, "decision": decision,
               "decider": decider.name, "forward": ext_ask, "company": company,
               "outsider": outsider.name if outsider else None}
    return t


def generate(n_threads: int, seed: int = 0) -> list[SynthThread]:
    """``n_threads`` synthetic threads with ids 1..n; the same ``seed`` gives the same threads."""
    rng = random.Random(seed)
    return [make_thread(i + 1, random.Random(rng.getrandbits(64))) for i in range(n_threads)]


def _rows(threads: list[SynthThread], seed: int) -> list[list[str]]:
    rows = []
    for t in threads:
        for m in t.mails:
            to_items: list[str] = []
            for p in m.to:
                to_items.extend(p.to_items)
            rows.append([str(t.thread_id), m.subject, m.date.strftime("%Y-%m-%d %H:%M:%S"),
                         m.sender.display, repr(to_items), m.body])
    random.Random(seed + 1).shuffle(rows)
    return rows


def write_kaggle_csv(out_dir: str | Path, n_threads: int, seed: int = 0) -> tuple[Path, Path]:
    """Write ``email_thread_details.csv`` and ``email_thread_summaries.csv`` (the Kaggle layout)."""
    if n_threads < 1:
        raise ConfigError(f"the number of threads must be >= 1, got {n_threads} (--threads/-n)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = generate(n_threads, seed)
    details, summaries = out / DETAILS_FILE, out / SUMMARIES_FILE
    for path, header, rows in (
        (details, DETAILS_COLUMNS, _rows(threads, seed)),
        (summaries, SUMMARIES_COLUMNS, [[str(t.thread_id), t.summary] for t in threads]),
    ):
        tmp = path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")  # the Kaggle files use \n and minimal quoting
            w.writerow(header)
            w.writerows(rows)
        tmp.replace(path)
    return details, summaries


def write_kaggle_json(out_dir: str | Path, n_threads: int, seed: int = 0, epoch: str = "ms") -> tuple[Path, Path]:
    """The Kaggle JSON copies: lists of records, ``timestamp`` as epoch seconds or milliseconds."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = generate(n_threads, seed)
    scale = 1000 if epoch == "ms" else 1
    records = []
    for tid, subject, ts, sender, to, body in _rows(threads, seed):
        stamp = datetime.strptime(ts, "%Y-%m-%d %H:%M:%S").replace(tzinfo=_UTC).timestamp()
        records.append({"thread_id": int(tid), "subject": subject, "timestamp": int(stamp * scale),
                        "from": sender, "to": to, "body": body})
    details = out / "email_thread_details.json"
    summaries = out / "email_thread_summaries.json"
    details.write_text(json.dumps(records), encoding="utf-8")
    summaries.write_text(json.dumps([{"thread_id": t.thread_id, "summary": t.summary} for t in threads]),
                         encoding="utf-8")
    return details, summaries


from datetime import timezone as _tz  # noqa: E402

_UTC = _tz.utc


def synth_command(out_dir: str | Path, n_threads: int = 600, seed: int = 0) -> tuple[Path, Path]:
    """`threadsum synth`: write the corpus and say where it went."""
    details, summaries = write_kaggle_csv(out_dir, n_threads, seed)
    n_rows = sum(1 for _ in csv.reader(details.open(encoding="utf-8"))) - 1
    print(f"wrote {n_threads} threads ({n_rows} emails) to {details.parent}/\n"
          f"  {details.name}\n  {summaries.name}\n"
          f"next: threadsum prepare -c configs/tiny.yaml data.source={details.parent}")
    return details, summaries


# --------------------------------------------------------------------------------- mail archives
ARCHIVE_MBOX = "archive.mbox"
ARCHIVE_EML_DIR = "eml"
ARCHIVE_JSONL = "threads.jsonl"


def _address(p: Person) -> str:
    domain = p.external or "enron.com"
    local = f"{p.first}.{p.last}".lower().replace("'", "")
    return email.utils.formataddr((p.display, f"{local}@{domain}"))


def _messages(t: SynthThread) -> list[bytes]:
    """The thread's emails as raw RFC 5322 messages (UTF-8, 8bit), chained by Message-ID /
    In-Reply-To / References.

    The subject carries the thread number: synthetic threads share topics, and the readers thread
    mail without threading headers by subject, so equal subjects would join unrelated roots.
    Built with the compat32 ``email.message.Message``: the default policy's header objects cost
    ~20 ms a message, more than the rest of the corpus' generation.
    """
    out: list[bytes] = []
    ids: list[str] = []
    for i, m in enumerate(t.mails):
        msg = email.message.Message()
        msg["From"] = _address(m.sender)
        msg["To"] = ", ".join(_address(p) for p in m.to)
        msg["Subject"] = f"{m.subject} [{t.thread_id}]"
        msg["Date"] = email.utils.format_datetime(m.date.replace(tzinfo=_UTC))
        msg["Message-ID"] = f"<synth-{t.thread_id}-{i}@example.com>"
        if ids:
            msg["In-Reply-To"] = ids[-1]
            msg["References"] = " ".join(ids)
        ids.append(msg["Message-ID"])
        msg["MIME-Version"] = "1.0"
        msg["Content-Type"] = "text/plain; charset=utf-8"
        msg["Content-Transfer-Encoding"] = "8bit"
        out.append(msg.as_bytes() + m.body.encode("utf-8") + b"\n")  # as_bytes ends the headers with the blank line
    return out


def _jsonl_record(t: SynthThread) -> dict:
    return {"thread_id": f"synth-{t.thread_id}", "subject": t.subject,
            "emails": [{"from": m.sender.display, "to": [x for p in m.to for x in p.to_items],
                        "date": m.date.strftime("%Y-%m-%d %H:%M:%S"), "subject": m.subject, "body": m.body}
                       for m in t.mails]}


def write_mail_archive(out_dir: str | Path, n_threads: int, seed: int = 0) -> list[Path]:
    """A mail archive of ``n_threads`` synthetic threads spread over three formats the readers take.

    Thread ``i`` goes to ``archive.mbox`` (i % 3 == 1), to ``eml/<i>-<k>.eml``, one file per email
    (i % 3 == 2), or to ``threads.jsonl`` in the JSONL thread form (i % 3 == 0). Summaries are left
    out: an archive is what a model summarizes. The same ``seed`` writes the same bytes.

    Returns:
        The three inputs: the mbox file, the .eml folder and the JSONL file.
    Raises:
        ConfigError: ``n_threads`` < 1.
    """
    if n_threads < 1:
        raise ConfigError(f"the number of threads must be >= 1, got {n_threads}")
    out = Path(out_dir)
    eml_dir = out / ARCHIVE_EML_DIR
    eml_dir.mkdir(parents=True, exist_ok=True)
    mbox_parts: list[bytes] = []
    jsonl_lines: list[str] = []
    for t in generate(n_threads, seed):
        kind = t.thread_id % 3
        if kind == 0:
            jsonl_lines.append(json.dumps(_jsonl_record(t), ensure_ascii=False))
            continue
        for k, raw in enumerate(_messages(t)):
            if kind == 2:
                (eml_dir / f"{t.thread_id:06d}-{k}.eml").write_bytes(raw)
                continue
            when = t.mails[k].date.strftime("%a %b %d %H:%M:%S %Y")
            # mboxrd: body lines starting 'From ' (after any '>') get one more '>'
            body = re.sub(rb"(?m)^(>*From )", rb">\1", raw)
            mbox_parts.append(b"From synth@example.com " + when.encode() + b"\n" + body.rstrip(b"\n") + b"\n\n")
    mbox, jsonl = out / ARCHIVE_MBOX, out / ARCHIVE_JSONL
    mbox.write_bytes(b"".join(mbox_parts))
    jsonl.write_text("".join(line + "\n" for line in jsonl_lines), encoding="utf-8")
    return [mbox, eml_dir, jsonl]
