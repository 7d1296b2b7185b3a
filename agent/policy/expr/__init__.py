"""The small expression language of policies: `when:` conditions and computed values ("=ceil(x / 2Mi)").

Policies run as root, so there is no eval and no Python AST: a tokenizer and a recursive-descent parser build a
tree of a dozen node types, and an evaluator walks it. Names are dotted paths looked up in plain data (host
facts), never Python attributes; only the whitelisted functions can be called; numbers are bounded (no 10**10**9,
no 1e308 * 10); operands are type-checked (no `True + 1`, no `"a" * 10**6`).

Grammar (Python-like precedence):
    expr     := or ['if' or 'else' expr]
    or       := and ('or' and)*
    and      := not ('and' not)*
    not      := 'not' not | compare
    compare  := sum [('=='|'!='|'<'|'<='|'>'|'>='|'in'|'not' 'in') sum]
    sum      := product (('+'|'-') product)*
    product  := unary (('*'|'/'|'//'|'%') unary)*
    unary    := ('-'|'+') unary | power
    power    := atom ['**' unary]
    atom     := NUMBER[Ki|Mi|Gi|Ti] | STRING | true | false | null | NAME | FUNC '(' args ')' | '(' expr ')'
              | '[' [expr (',' expr)*] ']'

syntax.py     the tree (one dataclass per node), limits, ExprError, names() and tree_depth()
values.py     numbers and their bounds, how a value is described in an error
parser.py     tokenizer and parser: text -> tree
evaluator.py  tree + name lookup -> value

The names below are the language's public face; callers use `from agent.policy import expr` and `expr.parse`.
"""

from agent.policy.expr.evaluator import evaluate
from agent.policy.expr.parser import parse
from agent.policy.expr.syntax import MAX_INT_BITS, ExprError, Literal, Name, Unary, excerpt, names, tree_depth
from agent.policy.expr.values import describe

__all__ = ["MAX_INT_BITS", "ExprError", "Literal", "Name", "Unary", "describe", "evaluate", "excerpt", "names", "parse",
           "tree_depth"]
