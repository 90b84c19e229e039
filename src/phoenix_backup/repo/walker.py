"""Walking a snapshot's trees: the one traversal the commands share, with a budget.

Trees are content-addressed, so one subtree may be named many times. A damaged or hostile
repository can name the same subtree from both entries of a folder, 33 levels deep, and so
describe 2^33 paths in a few kilobytes (a "DAG bomb"); or nest folders thousands deep. A walk
therefore loads each distinct tree once, iteratively (depth is data, not Python's stack), then
counts the paths and the depth below its root from those trees alone, and refuses a tree that
names more than MAX_PATHS paths or is deeper than MAX_DEPTH folders before it yields anything.
Within that budget, a tree naming more than MAX_REUSE times as many paths as the entries stored
below it is refused too (beyond FREE_PATHS paths): a bomb of 20 levels names 3 million paths from
21 trees, and walking them took minutes and gigabytes. A tree's entries count as many times as
the widest copying above it (the most entries of one tree naming it or a tree above it): a folder
copied with hard links (`cp -al`, pnpm's `node_modules`) is one tree named from each copy, and its
paths are no more than that count, whereas a bomb's folders, each naming the one below twice,
double the paths per level and count twice. The cost of
a walk is then bounded by the entries the repository's trees name, and by the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from phoenix_backup.errors import CorruptObject, ObjectNotFound, PhoenixError, UnsafePath, UsageError
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import Snapshot
from phoenix_backup.repo.tree import ListedExtents, Node

# Paths one walk may visit (and distinct nodes it may load): far more than any agent workspace
# holds, and small enough that a restore's plan of that many paths fits in memory.
MAX_PATHS = 4_000_000
# PATH_MAX is 4096 bytes, so no tree that a backup read from disk is deeper than this.
MAX_DEPTH = 2048
# A backup stores each folder's entries once per distinct folder: a path is named twice only when two
# folders are equal to the byte (same names, modes, times and files), and a file node records its
# inode, so only folders of folders can be, and folders copied with hard links (`cp -al`, pnpm):
# one tree named from each copy. Beyond FREE_PATHS, a walk may name at most MAX_REUSE paths per
# entry stored below its root, each tree's entries counted as often as the widest copying above it
# (so 70 hard-linked copies of a folder pass, and a bomb, 2^n paths from 4n such entries, does not).
FREE_PATHS = 65_536
MAX_REUSE = 8

# (tree id, the logical path where it was met, the error): a walk that is given one reports
# unreadable trees through it and goes on as if they were empty.
OnError = Callable[[bytes, str, PhoenixError], None]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


class Trees:
    """The distinct trees below one or more roots, loaded once and shared by the walks of one
    command (verify walks every snapshot through one `Trees`)."""

    def __init__(self, repo: Repository, *, max_paths: int = MAX_PATHS, max_depth: int = MAX_DEPTH) -> None:
        self.repo = repo
        self.max_paths = max_paths
        self.max_depth = max_depth
        self.nodes: dict[bytes, list[Node]] = {}
        self.first_path: dict[bytes, str] = {}  # where each tree was first met
        self._sizes: dict[bytes, tuple[int, int]] = {}  # tree -> (paths below it, its depth)

    def load(self, root: bytes, prefix: str = "", on_error: OnError | None = None) -> list[bytes]:
        """Load every tree below `root` that is not loaded yet; return them in the order met
        (parents first). Without `on_error` an unreadable tree raises."""
        new: list[bytes] = []
        failed: set[bytes] = set()
        loaded = 0
        stack = [(root, prefix, 0)]
        while stack:
            tree_id, path, depth = stack.pop()
            if tree_id in self.nodes or tree_id in failed:
                continue
            if depth > self.max_depth:
                raise self._too_deep(tree_id, path)
            try:
                nodes = self.repo.load_tree(tree_id)
            except (CorruptObject, ObjectNotFound, UnsafePath) as exc:
                if on_error is None:
                    raise
                failed.add(tree_id)
                on_error(tree_id, path, exc)
                continue
            loaded += len(nodes)
            if loaded > self.max_paths:
                raise self._too_many(tree_id, path)
            self.nodes[tree_id] = nodes
            self.first_path[tree_id] = path
            new.append(tree_id)
            for node in reversed(nodes):
                if node.type == "dir" and node.subtree is not None:
                    stack.append((node.subtree, _join(path, node.name), depth + 1))
        return new

    def check(self, root: bytes, prefix: str = "") -> int:
        """Raise CorruptObject when the loaded trees below `root` name more than `max_paths`
        paths or nest deeper than `max_depth`; return the number of paths."""
        paths, depth = self._size(root, prefix)
        if depth > self.max_depth:
            raise self._too_deep(root, prefix)
        if paths > self.max_paths:
            raise self._too_many(root, prefix)
        if paths > FREE_PATHS:
            stored = self._stored(root)
            if paths > MAX_REUSE * stored:
                raise CorruptObject(
                    f"tree {root.hex()[:16]} (at {prefix or '/'}) names {paths:,} paths but only {stored} entries are "
                    "stored below it: the same folders are named over and over; the snapshot is damaged or hostile "
                    "and was not read — `phx verify` names it and `phx forget ID` removes it"
                )
        return paths

    def _stored(self, root: bytes) -> int:
        """The entries of the distinct loaded trees below `root`, each tree's entries counted as
        many times as the widest copying above it: the most entries of one tree that name it, or
        that name a tree above it. 70 hard-linked copies of a folder (one tree named by 70 entries
        of their parent, and the trees below it) count 70 times, as many as the paths they name;
        a bomb's trees, each named twice by the one above, count twice, however many levels deep.
        The trees are met parents before children (the loaded trees name no cycle: `_size`)."""
        naming: dict[bytes, int] = {root: 0}  # tree -> entries of distinct trees naming it
        stack = [root]
        while stack:
            for node in self.nodes.get(stack.pop(), ()):
                if node.type == "dir" and node.subtree is not None:
                    if node.subtree not in naming:
                        naming[node.subtree] = 0
                        stack.append(node.subtree)
                    naming[node.subtree] += 1
        copies = {tree_id: max(count, 1) for tree_id, count in naming.items()}
        waiting = dict(naming)
        ready = [root]
        total = 0
        while ready:
            tree_id = ready.pop()
            nodes = self.nodes.get(tree_id, ())
            total += len(nodes) * copies[tree_id]
            for node in nodes:
                if node.type == "dir" and node.subtree is not None:
                    sub = node.subtree
                    copies[sub] = max(copies[sub], copies[tree_id])
                    waiting[sub] -= 1
                    if not waiting[sub]:
                        ready.append(sub)
        return total

    def _size(self, root: bytes, prefix: str) -> tuple[int, int]:
        """(paths, depth) below `root`, bottom-up over distinct trees (post-order, no recursion).
        A tree that could not be loaded counts as empty. A tree that names itself is damage."""
        sizes = self._sizes
        open_: set[bytes] = set()
        stack: list[tuple[bytes, bool]] = [(root, False)]
        while stack:
            tree_id, children_done = stack.pop()
            if tree_id in sizes:
                continue
            nodes = self.nodes.get(tree_id)
            if nodes is None:
                sizes[tree_id] = (0, 0)
                continue
            subtrees = [n.subtree for n in nodes if n.type == "dir" and n.subtree is not None]
            if not children_done:
                if tree_id in open_:
                    raise CorruptObject(
                        f"tree {tree_id.hex()[:16]} (below {prefix or '/'}) contains itself; the repository is "
                        "damaged or was tampered with — run `phx verify`"
                    )
                open_.add(tree_id)
                stack.append((tree_id, True))
                for sub in subtrees:
                    if sub not in sizes:
                        if sub in open_:
                            raise CorruptObject(
                                f"tree {sub.hex()[:16]} (below {prefix or '/'}) contains itself; the repository "
                                "is damaged or was tampered with — run `phx verify`"
                            )
                        stack.append((sub, False))
                continue
            open_.discard(tree_id)
            paths = len(nodes)
            depth = 0
            for sub in subtrees:
                sub_paths, sub_depth = sizes[sub]
                # Capped: the exact count of a bomb is of no use, and the numbers stay small.
                paths = min(paths + sub_paths, self.max_paths + 1)
                depth = max(depth, sub_depth + 1)
            sizes[tree_id] = (paths, depth)
        return sizes[root]

    def walk(self, root: bytes, prefix: str = "") -> Iterator[tuple[str, Node]]:
        """(logical path, node) for every node below `root`, depth first, parents before
        children, from the loaded trees (an unloaded tree is empty)."""
        stack: list[tuple[str, Iterator[Node]]] = [(prefix, iter(self.nodes.get(root, ())))]
        while stack:
            path, children = stack[-1]
            node = next(children, None)
            if node is None:
                stack.pop()
                continue
            child = _join(path, node.name)
            yield child, node
            if node.type == "dir" and node.subtree is not None:
                stack.append((child, iter(self.nodes.get(node.subtree, ()))))

    def _too_many(self, tree_id: bytes, path: str) -> CorruptObject:
        return CorruptObject(
            f"tree {tree_id.hex()[:16]} (at {path or '/'}) names more than the {self.max_paths:,} paths a walk "
            "allows; the snapshot is damaged or hostile and was not read — `phx verify` names it and "
            "`phx forget ID` removes it"
        )

    def _too_deep(self, tree_id: bytes, path: str) -> CorruptObject:
        return CorruptObject(
            f"tree {tree_id.hex()[:16]} (at {path or '/'}) nests folders more than {self.max_depth:,} deep, "
            "deeper than any file system path; the snapshot is damaged or hostile and was not read — "
            "`phx verify` names it and `phx forget ID` removes it"
        )


def walk_tree(
    repo: Repository, tree_id: bytes, prefix: str = "", *, on_error: OnError | None = None
) -> Iterator[tuple[str, Node]]:
    """(logical path, node) for every node below a tree, depth first, parents before children.

    Every tree is loaded and the budget checked before the first node is yielded."""
    trees = Trees(repo)
    trees.load(tree_id, prefix, on_error)
    trees.check(tree_id, prefix)
    yield from trees.walk(tree_id, prefix)


def find_node(repo: Repository, snap: Snapshot, logical: str) -> Node | None:
    """The node at `logical`, or None. The empty path is the snapshot's root (returned as a dir)."""
    if not logical:
        return Node(name="", type="dir", subtree=snap.tree)
    tree = snap.tree
    parts = logical.split("/")
    for i, part in enumerate(parts):
        match = next((n for n in repo.load_tree(tree) if n.name == part), None)
        if match is None:
            return None
        if i == len(parts) - 1:
            return match
        if match.type != "dir" or match.subtree is None:
            return None
        tree = match.subtree
    return None


def node_at(repo: Repository, snap: Snapshot, logical: str) -> Node:
    """The node at `logical`; a UsageError naming the snapshot when it holds no such path."""
    node = find_node(repo, snap, logical)
    if node is None:
        # A path below the home folder written as `backup --dry-run` shows it (`.argentos/memory.db`)
        # is read as the workspace's: name the home folder's path when the snapshot holds that.
        home = "home/" + logical.removeprefix("workspace/")
        if logical.startswith("workspace/") and find_node(repo, snap, home) is not None:
            raise UsageError(
                f"snapshot {snap.name} holds no {logical}, but it holds {home}: name that (or ~/{home[5:]})"
            )
        raise UsageError(f"snapshot {snap.name} holds no {logical}; see `phx ls {snap.id[:8]}` for its paths")
    return node


def used_blobs(snapshots: Iterable[Snapshot], load_tree: Callable[[bytes], list[Node]]) -> set[bytes]:
    """Every blob the snapshots refer to: their trees, the extent-list blobs of their databases
    (format 6) and the content of every file. Each distinct tree is loaded once (`load_tree` says
    how, and what an unreadable one does), each list blob read once; no paths, no budget. A list
    blob that cannot be read raises CorruptObject (the blobs it names are unknown)."""
    used: set[bytes] = set()
    stack = [s.tree for s in snapshots]
    while stack:
        tree_id = stack.pop()
        if tree_id in used:
            continue
        used.add(tree_id)
        for node in load_tree(tree_id):
            if node.subtree is not None:
                stack.append(node.subtree)
            content = node.content
            if isinstance(content, ListedExtents):
                for i, ref in enumerate(content.refs):
                    if ref.blob not in used:
                        used.update(content.read(i).blobs())
                        used.add(ref.blob)
            else:
                used.update(node.blobs())
    return used
