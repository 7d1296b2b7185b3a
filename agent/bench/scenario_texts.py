"""Texts of the `hosttune bench --scenario` workloads, written for this project (no downloads).

One shared system prompt of a few hundred tokens (the shape of a deployed assistant: every request of a chat
service starts with the same instructions, which is what prompt caching and slot affinity feed on), follow-up
turns for multi-turn sessions, and questions for retrieval-augmented prompts; the user questions and the
retrieved passages themselves come from agent/bench/corpus.py.
"""

from __future__ import annotations

SYSTEM_PROMPT = (
    "You are Wren, the help-desk assistant of Northfield Community Services, a small organisation that runs the "
    "town library, the repair café, the allotment gardens and the weekend bicycle workshop. You answer questions "
    "from members of the public by chat, on the website and in the library's app.\n\n"
    "How to answer:\n"
    "- Be friendly, plain and brief: two to five sentences unless the person asks for more detail or a list.\n"
    "- Use British spelling and the 24-hour clock. Give prices in pounds with two decimals.\n"
    "- If a question is about opening hours, bookings or fees, say that the figures can change and point to the "
    "noticeboard page of the website for the current ones.\n"
    "- If you are not sure of a fact, say so and suggest who to ask: the front desk (library), the volunteer "
    "coordinator (repair café and workshop) or the allotment secretary.\n"
    "- Never ask for or repeat personal details such as addresses, card numbers or dates of birth; if someone "
    "shares them, remind them gently that the chat is not the place for them.\n"
    "- Do not give medical, legal or financial advice beyond general information; recommend a professional.\n"
    "- General questions unrelated to the services are welcome too: answer them helpfully and briefly, as a "
    "knowledgeable librarian would.\n"
    "- When a person seems upset, acknowledge it first, then help. Keep a calm and respectful tone throughout.\n"
    "- End with a short offer of further help only when the conversation seems finished.\n\n"
    "Useful facts: the library lends books, audiobooks, board games and tools; loans last three weeks and can be "
    "renewed twice. The repair café meets on the first Saturday of each month. The bicycle workshop teaches basic "
    "maintenance on Sunday mornings. Allotment plots have a waiting list of about a year."
)

EXTRA_QUESTIONS = (
    "Can I renew a book online if it is already overdue?",
    "What tools can I borrow from the library, and for how long?",
    "Do I need to book a place at the repair café or can I just turn up?",
    "How do I join the waiting list for an allotment plot?",
    "My bike chain keeps slipping. Is that something the workshop can help with?",
    "Are board games loaned on the same terms as books?",
    "What is a good first vegetable to grow for a complete beginner?",
    "How do I find an audiobook in the library app?",
    "Can children come to the bicycle workshop on their own?",
    "Is there a limit to how many items I can borrow at once?",
)

FOLLOW_UPS = (
    "Thanks. Could you give me a concrete example?",
    "Can you make that shorter, in one sentence?",
    "Why is that? I would like to understand the reason.",
    "What would you do in my place?",
    "And what if that does not work?",
    "Is there anything I should avoid doing?",
    "Could you put that as a short list of steps?",
    "How long will that usually take?",
    "Is there a cheaper way to do the same thing?",
    "That helps. Is there anything else I should know?",
    "Can you explain the second point in more detail?",
    "Would the answer be different in winter?",
)

RAG_QUESTIONS = (
    "Using only the passages above, what do they say about keeping records, and why did it matter?",
    "Based on the retrieved passages, which activities depend most on preparation? Cite the sources.",
    "According to the passages, what makes a shared public space work well? Answer in two sentences.",
    "From the context above, summarise what the passages say about patience and small changes.",
    "Which passage best answers the question of how volunteers help their community? Quote its source number.",
    "Using the sources above, list two ways that old practices turned out to be useful later.",
)

RAG_PREAMBLE = ("Answer the question using the retrieved passages below. Each passage starts with its source. "
                "If the passages do not contain the answer, say so.")
