"""The offline provider's words, one set per language, and which one a goal is written in.

The offline model answers in the goal's language when it can tell it from the script: Chinese
(Han characters), Japanese (kana), Russian (Cyrillic), Arabic, Greek; English otherwise, Latin
script included (it cannot tell French from English). Templates take `str.format` fields:
`{t}` the topic ("Python"), `{app}` what it is applied to, `{goal}`, `{concept}`, `{module}`,
`{level}`, `{minutes}`, `{focus}`, `{feedback}`, `{part}`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ("LANGUAGES", "Language", "language_of")

# (module title, concept titles)
Module = tuple[str, tuple[str, ...]]
# (stage title, stage description, modules)
StagePlan = tuple[str, str, tuple[Module, ...]]
# (question, right answer, wrong answers)
QuizStem = tuple[str, str, tuple[str, str, str]]


@dataclass(frozen=True)
class Language:
    """Everything the offline provider writes, in one language."""

    code: str  # ISO 639-1; also the Wikipedia the resources link to
    lead: re.Pattern[str]  # the words around a goal that are not its topic ("Learn", "を学ぶ")
    application: re.Pattern[str]  # what separates the topic from its use (" for ")
    default_use: str
    learner: Mapping[str, str]  # level → the subject of the intent's summary
    for_learner: Mapping[str, str]  # level → "for an intermediate learner"
    level_name: Mapping[str, str]
    intent_summary: str
    outcomes: tuple[str, str, str]
    prerequisites: tuple[str, str, str, str]
    stages: tuple[StagePlan, ...]
    module_description: str
    concept_summary: str
    title: str
    title_for: str
    curriculum_summary: str
    reviewer_module: str
    reviewer_description: str
    reviewer_concept: str
    reviewer_parts: tuple[str, str]
    reviewer_summary: str
    headings: tuple[str, str, str, str]  # why it matters, key ideas, worked example, practice
    why: str
    key_ideas: tuple[str, ...]
    steps: tuple[str, str, str, str]
    practice: str
    resources: tuple[str, str, str]  # documentation, article, video
    documentation: str  # the search words for the topic's documentation
    quiz: tuple[QuizStem, QuizStem, QuizStem]
    full_stop: str


def _plan(
    stages: tuple[tuple[str, str, tuple[str, str, str]], ...], concept: str, parts: tuple[str, ...]
) -> tuple[StagePlan, ...]:
    """Stages whose concepts are each module's title with one of `parts` (`concept` joins them)."""
    return tuple(
        (
            title,
            description,
            tuple(
                (module, tuple(concept.format(module=module, part=part) for part in parts))
                for module in modules
            ),
        )
        for title, description, modules in stages
    )


ENGLISH = Language(
    code="en",
    lead=re.compile(
        r"^(?:i\s+(?:want|would like)\s+to\s+|i\s+need\s+to\s+|how\s+to\s+)?"
        r"(?:learn(?:ing)?|master(?:ing)?|study(?:ing)?|understand(?:ing)?|get\s+good\s+at|"
        r"get\s+better\s+at|improve\s+(?:my|at)|become(?:\s+an?)?|pick\s+up)\s+"
        r"(?:how\s+to\s+|to\s+)?",
        re.IGNORECASE,
    ),
    application=re.compile(r"\s+(?:for|to|in|with|so\s+i\s+can)\s+", re.IGNORECASE),
    default_use="real projects",
    # The article follows the level's sound: "An intermediate", never "A intermediate".
    learner={
        "beginner": "A beginner learner",
        "intermediate": "An intermediate learner",
        "advanced": "An advanced learner",
    },
    for_learner={
        "beginner": "for a beginner learner",
        "intermediate": "for an intermediate learner",
        "advanced": "for an advanced learner",
    },
    level_name={"beginner": "beginner", "intermediate": "intermediate", "advanced": "advanced"},
    intent_summary="{learner} who wants to {goal}: build solid {t} fundamentals, then apply "
    "them to {app}.",
    outcomes=(
        "Explain the core ideas of {t} in your own words",
        "Use {t} confidently for {app}",
        "Finish a small {t} project end to end",
    ),
    prerequisites=("curiosity", "a computer", "a notebook for notes", "basic arithmetic"),
    stages=(
        (
            "Foundations",
            "Get oriented and comfortable with the basic vocabulary of {t}.",
            (
                (
                    "Orientation",
                    (
                        "What {t} is and where it is used",
                        "Setting up a {t} environment",
                        "Reading {t} documentation effectively",
                    ),
                ),
                (
                    "Basic building blocks",
                    (
                        "Core vocabulary of {t}",
                        "The smallest useful {t} example",
                        "Common beginner mistakes in {t}",
                    ),
                ),
                (
                    "First steps",
                    (
                        "A guided {t} exercise",
                        "Debugging your first {t} problems",
                        "Building a daily {t} practice habit",
                    ),
                ),
            ),
        ),
        (
            "Core skills",
            "Build the techniques you will use in almost every piece of {t} work.",
            (
                (
                    "Essential techniques",
                    (
                        "Key techniques every {t} learner needs",
                        "Structuring your {t} work",
                        "Patterns you will meet again and again in {t}",
                    ),
                ),
                (
                    "Tools of the trade",
                    (
                        "The standard {t} toolkit",
                        "Choosing the right tool for a {t} task",
                        "Automating repetitive {t} work",
                    ),
                ),
                (
                    "Quality and correctness",
                    (
                        "Checking your {t} work",
                        "Feedback loops for {t}",
                        "Reading other people's {t} work",
                    ),
                ),
            ),
        ),
        (
            "Applied practice",
            "Use {t} on real problems from {app}.",
            (
                (
                    "Applying {t} to {app}",
                    (
                        "Mapping {app} problems onto {t}",
                        "A first {app} project with {t}",
                        "Common {app} workflows in {t}",
                    ),
                ),
                (
                    "Projects",
                    (
                        "Scoping a small {t} project",
                        "Iterating on a {t} project with feedback",
                        "Presenting your {t} results",
                    ),
                ),
                (
                    "Working at scale",
                    (
                        "Making {t} work faster",
                        "Handling larger {t} problems",
                        "Trade-offs in real-world {t}",
                    ),
                ),
            ),
        ),
        (
            "Going further",
            "Deepen your understanding of {t} and plan what comes next.",
            (
                (
                    "Advanced topics",
                    (
                        "Advanced {t} concepts",
                        "How {t} works under the hood",
                        "Edge cases and pitfalls in {t}",
                    ),
                ),
                (
                    "Ecosystem and community",
                    (
                        "The {t} ecosystem",
                        "Learning from the {t} community",
                        "Staying current with {t}",
                    ),
                ),
                (
                    "Capstone",
                    (
                        "Designing a capstone {t} project",
                        "Building the capstone",
                        "Reviewing your progress and next steps",
                    ),
                ),
            ),
        ),
    ),
    module_description="{module} {for_learner}.",
    concept_summary="{concept}: what it is, why it matters for {app}, and how to practise it.",
    title="{t} roadmap",
    title_for="{t} roadmap for {app}",
    curriculum_summary="From first steps to confident, independent work with {t}.",
    reviewer_module="Reviewer focus: {focus}",
    reviewer_description="Added after review feedback: {feedback}",
    reviewer_concept="{focus}: {part} ({t})",
    reviewer_parts=("fundamentals", "in practice"),
    reviewer_summary="Addresses the reviewer's request '{focus}'.",
    headings=("Why it matters", "Key ideas", "Worked example", "Practice"),
    why="Your goal is to {goal}. At the {level} level, *{concept}* is one of the pieces that "
    "makes the rest of {t} easier to learn and to apply to {app}.",
    key_ideas=(
        "Start from a concrete example, then name the general rule behind it.",
        "Most difficulties come from a small number of recurring misunderstandings.",
        "Write down what you expect before you try something; compare with what happens.",
        "Small, frequent practice beats long, rare sessions.",
        "Learn the vocabulary: naming things precisely makes them easier to reason about.",
        "Every tool has trade-offs; know what you give up as well as what you gain.",
        "Reading good examples is as valuable as producing your own.",
        "When stuck, reduce the problem until the smallest failing case is obvious.",
    ),
    steps=(
        "Pick a tiny, real task from {app}.",
        "Solve it using only what this concept covers in {t}.",
        "Explain each step out loud, as if teaching someone else.",
        "Change one detail of the task and predict what changes in the solution.",
    ),
    practice="Spend {minutes} minutes on a variation of the example above, then write three "
    "sentences about what surprised you.",
    resources=(
        "Official {t} documentation",
        "Encyclopedia: {concept}",
        "Video walkthroughs: {concept}",
    ),
    documentation="documentation",
    quiz=(
        (
            "What is the best first step when learning '{concept}'?",
            "Work through one small concrete example",
            (
                "Memorise every detail first",
                "Skip it and come back later",
                "Read about it without trying anything",
            ),
        ),
        (
            "How does '{concept}' help with {app}?",
            "It is a building block that later {t} skills rely on",
            (
                "It has no practical use",
                "It replaces every other skill",
                "It only matters for experts",
            ),
        ),
        (
            "You are stuck on an exercise. What should you do?",
            "Reduce it to the smallest case that still fails",
            (
                "Start over from scratch",
                "Wait until inspiration strikes",
                "Copy a solution without reading it",
            ),
        ),
    ),
    full_stop=".",
)

CHINESE = Language(
    code="zh",
    lead=re.compile(r"^(?:我想|我要|想)?(?:学习|学会|掌握|了解|学)\s*"),
    application=re.compile(r"\s*(?:用于|来做|以便)\s*"),
    default_use="实际项目",
    learner={
        "beginner": "一位初级学习者",
        "intermediate": "一位中级学习者",
        "advanced": "一位高级学习者",
    },
    for_learner={
        "beginner": "面向初级学习者",
        "intermediate": "面向中级学习者",
        "advanced": "面向高级学习者",
    },
    level_name={"beginner": "初级", "intermediate": "中级", "advanced": "高级"},
    intent_summary="{learner}，目标是「{goal}」：先打好 {t} 的基础，再把它用于{app}。",
    outcomes=(
        "用自己的话解释 {t} 的核心概念",
        "在{app}中自信地使用 {t}",
        "独立完成一个小型 {t} 项目",
    ),
    prerequisites=("好奇心", "一台电脑", "一个记笔记的本子", "基本的算术"),
    stages=_plan(
        (
            ("基础", "熟悉 {t} 的基本概念和术语。", ("{t} 入门概览", "{t} 基本构件", "{t} 第一步")),
            (
                "核心技能",
                "掌握几乎所有 {t} 工作都会用到的技巧。",
                ("{t} 关键技巧", "{t} 常用工具", "{t} 质量与正确性"),
            ),
            (
                "实践应用",
                "把 {t} 用到{app}的真实问题上。",
                ("用 {t} 解决{app}问题", "{t} 项目", "大规模使用 {t}"),
            ),
            (
                "深入提高",
                "加深对 {t} 的理解，并规划下一步。",
                ("{t} 进阶主题", "{t} 生态与社区", "{t} 毕业项目"),
            ),
        ),
        "{module}：{part}",
        ("核心概念", "动手练习", "常见错误"),
    ),
    module_description="{module}，{for_learner}。",
    concept_summary="{concept}：它是什么，为什么对{app}重要，以及如何练习。",
    title="{t} 学习路线",
    title_for="{t} 学习路线：{app}",
    curriculum_summary="从第一步到能够独立、自信地使用 {t}。",
    reviewer_module="评审重点：{focus}",
    reviewer_description="根据评审意见添加：{feedback}",
    reviewer_concept="{focus}：{part}（{t}）",
    reviewer_parts=("基础", "实践"),
    reviewer_summary="回应评审的要求「{focus}」。",
    headings=("为什么重要", "关键要点", "示例演练", "练习"),
    why="你的目标是「{goal}」。在{level}阶段，*{concept}* 是让 {t} 的其余部分更容易学习、"
    "也更容易用于{app}的一块基石。",
    key_ideas=(
        "先从具体的例子出发，再总结背后的一般规律。",
        "大多数困难都来自少数几个反复出现的误解。",
        "动手之前先写下你的预期，再与实际结果比较。",
        "少量多次的练习胜过偶尔的长时间学习。",
        "掌握术语：准确地命名事物，更容易推理。",
    ),
    steps=(
        "从{app}中挑选一个很小的真实任务。",
        "只用这个概念涉及的 {t} 知识解决它。",
        "把每一步大声讲出来，就像在教别人。",
        "改变任务中的一个细节，预测解法会有什么变化。",
    ),
    practice="花 {minutes} 分钟练习上面例子的一个变体，然后写三句话，记下让你意外的地方。",
    resources=("{t} 官方文档", "百科：{concept}", "视频讲解：{concept}"),
    documentation="官方文档",
    quiz=(
        (
            "学习「{concept}」时，最好的第一步是什么？",
            "先完整做一个具体的小例子",
            ("先把所有细节背下来", "跳过它，以后再说", "只读资料，不动手尝试"),
        ),
        (
            "「{concept}」对{app}有什么帮助？",
            "它是后续 {t} 技能所依赖的基础",
            ("它没有实际用途", "它能取代其他所有技能", "它只对专家有用"),
        ),
        (
            "练习卡住了，应该怎么办？",
            "把问题缩小到仍然出错的最小情形",
            ("从头再来", "等待灵感出现", "不看就照抄答案"),
        ),
    ),
    full_stop="。",
)

JAPANESE = Language(
    code="ja",
    lead=re.compile(
        r"(?:を|の)?(?:学びたい|学ぶ|勉強(?:したい|する)?|習う|マスター(?:する)?)[。.!！]*$"
    ),
    application=re.compile(r"\s*(?:で|のための)\s*"),
    default_use="実際のプロジェクト",
    learner={
        "beginner": "初級の学習者",
        "intermediate": "中級の学習者",
        "advanced": "上級の学習者",
    },
    for_learner={"beginner": "初級者向け", "intermediate": "中級者向け", "advanced": "上級者向け"},
    level_name={"beginner": "初級", "intermediate": "中級", "advanced": "上級"},
    intent_summary="「{goal}」を目指す{learner}：まず {t} の基礎を固め、それを{app}に活かします。",
    outcomes=(
        "{t} の中心となる考え方を自分の言葉で説明する",
        "{app}で {t} を自信を持って使う",
        "小さな {t} プロジェクトを最後までやり遂げる",
    ),
    prerequisites=("好奇心", "パソコン", "メモ用のノート", "基本的な算数"),
    stages=_plan(
        (
            (
                "基礎",
                "{t} の基本的な用語に慣れましょう。",
                ("{t} の全体像", "{t} の基本要素", "{t} の第一歩"),
            ),
            (
                "コアスキル",
                "ほとんどの {t} の作業で使う技術を身につけます。",
                ("{t} の重要な技術", "{t} の道具", "{t} の品質と正しさ"),
            ),
            (
                "実践",
                "{app}の実際の問題に {t} を使います。",
                ("{t} を{app}に応用する", "{t} のプロジェクト", "大規模な {t}"),
            ),
            (
                "さらに先へ",
                "{t} の理解を深め、次の一歩を計画します。",
                ("{t} の発展的なトピック", "{t} のエコシステムとコミュニティ", "{t} の総仕上げ"),
            ),
        ),
        "{module}：{part}",
        ("基本概念", "実践練習", "よくある間違い"),
    ),
    module_description="{module}（{for_learner}）。",
    concept_summary="{concept}：それは何か、{app}にとってなぜ重要か、どう練習するか。",
    title="{t} 学習ロードマップ",
    title_for="{app}のための {t} 学習ロードマップ",
    curriculum_summary="最初の一歩から、{t} を自信を持って一人で使えるようになるまで。",
    reviewer_module="レビューでの重点：{focus}",
    reviewer_description="レビューのフィードバックを受けて追加：{feedback}",
    reviewer_concept="{focus}：{part}（{t}）",
    reviewer_parts=("基礎", "実践"),
    reviewer_summary="レビューの要望「{focus}」に応えます。",
    headings=("なぜ重要か", "要点", "例題", "練習"),
    why="あなたの目標は「{goal}」です。{level}の段階では、*{concept}* は {t} の残りを学びやすくし、"
    "{app}に活かしやすくする要素の一つです。",
    key_ideas=(
        "具体的な例から始め、その背後にある一般的なルールを言葉にしましょう。",
        "ほとんどのつまずきは、少数のよくある誤解から生まれます。",
        "試す前に予想を書き、実際の結果と比べましょう。",
        "短く頻繁な練習は、長くまれな学習に勝ります。",
        "用語を覚えましょう：正確に名前をつけると考えやすくなります。",
    ),
    steps=(
        "{app}から小さな実際の課題を一つ選びます。",
        "この概念で扱う {t} の知識だけで解きます。",
        "人に教えるつもりで、各ステップを声に出して説明します。",
        "課題の一部を変え、解き方がどう変わるか予想します。",
    ),
    practice="上の例のバリエーションに {minutes} 分取り組み、驚いたことを三つの文で書きましょう。",
    resources=("{t} 公式ドキュメント", "百科事典：{concept}", "解説動画：{concept}"),
    documentation="公式ドキュメント",
    quiz=(
        (
            "「{concept}」を学ぶとき、最初の一歩として最もよいのは？",
            "小さな具体例を一つ最後までやってみる",
            ("まず細部をすべて暗記する", "飛ばして後で戻る", "試さずに読むだけにする"),
        ),
        (
            "「{concept}」は{app}にどう役立ちますか？",
            "後の {t} のスキルが土台にする要素である",
            ("実用的な使い道はない", "他のすべてのスキルの代わりになる", "専門家にしか関係ない"),
        ),
        (
            "練習問題で行き詰まりました。どうすべきですか？",
            "まだ失敗する最小のケースまで問題を小さくする",
            ("最初からやり直す", "ひらめきを待つ", "読まずに解答を写す"),
        ),
    ),
    full_stop="。",
)

RUSSIAN = Language(
    code="ru",
    lead=re.compile(
        r"^(?:(?:я\s+)?хочу\s+)?(?:изучить|выучить|освоить|изучать|учить|научиться)\s+",
        re.IGNORECASE,
    ),
    application=re.compile(r"\s+(?:для|чтобы)\s+", re.IGNORECASE),
    default_use="реальных проектов",
    learner={
        "beginner": "Начинающий ученик",
        "intermediate": "Ученик среднего уровня",
        "advanced": "Продвинутый ученик",
    },
    for_learner={
        "beginner": "для начинающих",
        "intermediate": "для среднего уровня",
        "advanced": "для продвинутых",
    },
    level_name={"beginner": "начальном", "intermediate": "среднем", "advanced": "продвинутом"},
    intent_summary="{learner}, который хочет {goal}: заложить прочную основу {t}, а затем "
    "применить её для {app}.",
    outcomes=(
        "Объяснять основные идеи {t} своими словами",
        "Уверенно использовать {t} для {app}",
        "Довести небольшой проект на {t} до конца",
    ),
    prerequisites=("любопытство", "компьютер", "тетрадь для заметок", "базовая арифметика"),
    stages=_plan(
        (
            (
                "Основы",
                "Освойтесь с базовыми понятиями {t}.",
                ("Знакомство с {t}", "Базовые элементы {t}", "Первые шаги в {t}"),
            ),
            (
                "Ключевые навыки",
                "Приёмы, которые нужны почти в любой работе с {t}.",
                ("Основные приёмы {t}", "Инструменты {t}", "Качество и корректность в {t}"),
            ),
            (
                "Практика",
                "Применяйте {t} к реальным задачам для {app}.",
                ("{t} для {app}", "Проекты на {t}", "{t} в большом масштабе"),
            ),
            (
                "Дальше",
                "Углубите понимание {t} и спланируйте следующий шаг.",
                ("Продвинутые темы {t}", "Экосистема и сообщество {t}", "Итоговый проект на {t}"),
            ),
        ),
        "{module}: {part}",
        ("ключевые понятия", "практика", "типичные ошибки"),
    ),
    module_description="{module} — {for_learner}.",
    concept_summary="{concept}: что это, почему это важно для {app} и как это тренировать.",
    title="План изучения {t}",
    title_for="План изучения {t} для {app}",
    curriculum_summary="От первых шагов до уверенной самостоятельной работы с {t}.",
    reviewer_module="По замечанию рецензента: {focus}",
    reviewer_description="Добавлено по отзыву рецензента: {feedback}",
    reviewer_concept="{focus}: {part} ({t})",
    reviewer_parts=("основы", "на практике"),
    reviewer_summary="Отвечает на просьбу рецензента «{focus}».",
    headings=("Почему это важно", "Главные идеи", "Разбор примера", "Практика"),
    why="Ваша цель — {goal}. На {level} уровне *{concept}* — одна из частей, которые облегчают "
    "изучение остального в {t} и применение для {app}.",
    key_ideas=(
        "Начните с конкретного примера, затем сформулируйте общее правило.",
        "Большинство трудностей возникает из нескольких повторяющихся заблуждений.",
        "Прежде чем пробовать, запишите ожидание и сравните его с результатом.",
        "Короткая частая практика лучше долгих редких занятий.",
        "Учите термины: точные названия облегчают рассуждение.",
    ),
    steps=(
        "Выберите маленькую реальную задачу для {app}.",
        "Решите её, используя только то, что охватывает это понятие в {t}.",
        "Объясните вслух каждый шаг, как будто учите кого-то.",
        "Измените одну деталь задачи и предскажите, что изменится в решении.",
    ),
    practice="Потратьте {minutes} минут на вариацию примера выше, затем напишите три "
    "предложения о том, что вас удивило.",
    resources=(
        "Официальная документация {t}",
        "Энциклопедия: {concept}",
        "Видеоразборы: {concept}",
    ),
    documentation="документация",
    quiz=(
        (
            "Какой первый шаг лучше всего при изучении «{concept}»?",
            "Разобрать один небольшой конкретный пример",
            (
                "Сначала выучить все детали",
                "Пропустить и вернуться позже",
                "Читать, ничего не пробуя",
            ),
        ),
        (
            "Как «{concept}» помогает для {app}?",
            "Это основа, на которую опираются дальнейшие навыки {t}",
            (
                "Никакой практической пользы",
                "Заменяет все остальные навыки",
                "Важно только для экспертов",
            ),
        ),
        (
            "Вы застряли на упражнении. Что делать?",
            "Сократить задачу до наименьшего случая, который всё ещё не работает",
            ("Начать всё заново", "Ждать вдохновения", "Списать решение, не читая его"),
        ),
    ),
    full_stop=".",
)

ARABIC = Language(
    code="ar",
    lead=re.compile(r"^(?:أريد\s+(?:أن\s+)?)?(?:تعلم|تعلّم|أتعلم|أتعلّم|دراسة|إتقان)\s+"),
    application=re.compile(r"\s+(?:من\s+أجل|في)\s+"),
    default_use="مشاريع حقيقية",
    learner={
        "beginner": "متعلم مبتدئ",
        "intermediate": "متعلم متوسط المستوى",
        "advanced": "متعلم متقدم",
    },
    for_learner={
        "beginner": "للمبتدئين",
        "intermediate": "للمستوى المتوسط",
        "advanced": "للمستوى المتقدم",
    },
    level_name={"beginner": "المبتدئ", "intermediate": "المتوسط", "advanced": "المتقدم"},
    intent_summary="{learner} يريد «{goal}»: بناء أساس متين في {t}، ثم تطبيقه في {app}.",
    outcomes=(
        "شرح الأفكار الأساسية في {t} بكلماتك",
        "استخدام {t} بثقة في {app}",
        "إنجاز مشروع صغير في {t} من البداية إلى النهاية",
    ),
    prerequisites=("الفضول", "حاسوب", "دفتر للملاحظات", "الحساب الأساسي"),
    stages=_plan(
        (
            (
                "الأساسيات",
                "تعرّف على المفردات الأساسية في {t}.",
                ("مدخل إلى {t}", "اللبنات الأساسية في {t}", "الخطوات الأولى في {t}"),
            ),
            (
                "المهارات الأساسية",
                "التقنيات التي ستستخدمها في كل عمل تقريبًا في {t}.",
                ("تقنيات {t} الأساسية", "أدوات {t}", "الجودة والصحة في {t}"),
            ),
            (
                "التطبيق العملي",
                "استخدم {t} في مسائل حقيقية من {app}.",
                ("تطبيق {t} في {app}", "مشاريع {t}", "{t} على نطاق واسع"),
            ),
            (
                "التعمق",
                "عمّق فهمك لـ {t} وخطط للخطوة التالية.",
                ("موضوعات متقدمة في {t}", "منظومة {t} ومجتمعه", "المشروع الختامي في {t}"),
            ),
        ),
        "{module}: {part}",
        ("المفاهيم الأساسية", "تمرين عملي", "أخطاء شائعة"),
    ),
    module_description="{module} — {for_learner}.",
    concept_summary="{concept}: ما هو، ولماذا يهم في {app}، وكيف تتدرب عليه.",
    title="خارطة تعلم {t}",
    title_for="خارطة تعلم {t} من أجل {app}",
    curriculum_summary="من الخطوات الأولى إلى العمل المستقل الواثق في {t}.",
    reviewer_module="تركيز المراجع: {focus}",
    reviewer_description="أضيف بعد ملاحظات المراجعة: {feedback}",
    reviewer_concept="{focus}: {part} ({t})",
    reviewer_parts=("الأساسيات", "في التطبيق"),
    reviewer_summary="يلبي طلب المراجع «{focus}».",
    headings=("لماذا يهم", "الأفكار الرئيسية", "مثال محلول", "تمرين"),
    why="هدفك هو «{goal}». في المستوى {level}، يُعد *{concept}* من الأجزاء التي تجعل بقية {t} "
    "أسهل في التعلم والتطبيق في {app}.",
    key_ideas=(
        "ابدأ بمثال ملموس، ثم سمِّ القاعدة العامة وراءه.",
        "معظم الصعوبات تأتي من عدد قليل من سوء الفهم المتكرر.",
        "اكتب ما تتوقعه قبل أن تجرب، ثم قارنه بما يحدث.",
        "التمرين القصير المتكرر أفضل من الجلسات الطويلة النادرة.",
        "تعلّم المصطلحات: التسمية الدقيقة تسهّل التفكير.",
    ),
    steps=(
        "اختر مهمة حقيقية صغيرة من {app}.",
        "حلّها باستخدام ما يغطيه هذا المفهوم في {t} فقط.",
        "اشرح كل خطوة بصوت عالٍ كأنك تعلّم شخصًا آخر.",
        "غيّر تفصيلًا واحدًا في المهمة وتوقع ما سيتغير في الحل.",
    ),
    practice="اقضِ {minutes} دقيقة على صيغة مختلفة من المثال أعلاه، ثم اكتب ثلاث جمل عما فاجأك.",
    resources=("التوثيق الرسمي لـ {t}", "موسوعة: {concept}", "شروحات بالفيديو: {concept}"),
    documentation="توثيق",
    quiz=(
        (
            "ما أفضل خطوة أولى عند تعلم «{concept}»؟",
            "حلّ مثال صغير ملموس حتى النهاية",
            ("حفظ كل التفاصيل أولًا", "تخطيه والعودة لاحقًا", "القراءة عنه دون تجربة أي شيء"),
        ),
        (
            "كيف يساعد «{concept}» في {app}؟",
            "إنه لبنة تعتمد عليها مهارات {t} اللاحقة",
            ("ليس له استخدام عملي", "يغني عن كل المهارات الأخرى", "لا يهم إلا الخبراء"),
        ),
        (
            "علقت في تمرين. ماذا تفعل؟",
            "صغّر المسألة إلى أصغر حالة ما زالت تفشل",
            ("البدء من جديد", "انتظار الإلهام", "نسخ الحل دون قراءته"),
        ),
    ),
    full_stop=".",
)

GREEK = Language(
    code="el",
    lead=re.compile(
        r"^(?:θέλω\s+να\s+)?(?:μάθε|μάθετε|μάθω|μαθαίνω|εκμάθηση|σπούδασε)\s+", re.IGNORECASE
    ),
    application=re.compile(r"\s+(?:για)\s+", re.IGNORECASE),
    default_use="πραγματικά έργα",
    learner={
        "beginner": "Ένας αρχάριος μαθητής",
        "intermediate": "Ένας μαθητής μεσαίου επιπέδου",
        "advanced": "Ένας προχωρημένος μαθητής",
    },
    for_learner={
        "beginner": "για αρχάριους",
        "intermediate": "για μεσαίο επίπεδο",
        "advanced": "για προχωρημένους",
    },
    level_name={"beginner": "αρχάριο", "intermediate": "μεσαίο", "advanced": "προχωρημένο"},
    intent_summary="{learner} που θέλει να {goal}: γερές βάσεις στο {t}, και μετά εφαρμογή "
    "τους σε {app}.",
    outcomes=(
        "Να εξηγείς τις βασικές ιδέες του {t} με δικά σου λόγια",
        "Να χρησιμοποιείς το {t} με σιγουριά για {app}",
        "Να ολοκληρώσεις ένα μικρό έργο με {t}",
    ),
    prerequisites=(
        "περιέργεια",
        "ένας υπολογιστής",
        "ένα τετράδιο για σημειώσεις",
        "βασική αριθμητική",
    ),
    stages=_plan(
        (
            (
                "Βάσεις",
                "Εξοικειώσου με το βασικό λεξιλόγιο του {t}.",
                ("Γνωριμία με το {t}", "Βασικά δομικά στοιχεία του {t}", "Πρώτα βήματα στο {t}"),
            ),
            (
                "Βασικές δεξιότητες",
                "Οι τεχνικές που θα χρησιμοποιείς σχεδόν σε κάθε δουλειά με {t}.",
                ("Βασικές τεχνικές του {t}", "Εργαλεία του {t}", "Ποιότητα και ορθότητα στο {t}"),
            ),
            (
                "Εφαρμογή",
                "Χρησιμοποίησε το {t} σε πραγματικά προβλήματα για {app}.",
                ("Το {t} για {app}", "Έργα με {t}", "Το {t} σε μεγάλη κλίμακα"),
            ),
            (
                "Παραπέρα",
                "Εμβάθυνε στο {t} και σχεδίασε το επόμενο βήμα.",
                (
                    "Προχωρημένα θέματα του {t}",
                    "Οικοσύστημα και κοινότητα του {t}",
                    "Τελικό έργο με {t}",
                ),
            ),
        ),
        "{module}: {part}",
        ("βασικές έννοιες", "πρακτική", "συνηθισμένα λάθη"),
    ),
    module_description="{module} — {for_learner}.",
    concept_summary="{concept}: τι είναι, γιατί μετράει για {app} και πώς να το εξασκήσεις.",
    title="Οδηγός εκμάθησης {t}",
    title_for="Οδηγός εκμάθησης {t} για {app}",
    curriculum_summary="Από τα πρώτα βήματα ως τη σίγουρη, αυτόνομη δουλειά με {t}.",
    reviewer_module="Έμφαση του αξιολογητή: {focus}",
    reviewer_description="Προστέθηκε μετά από σχόλια αξιολόγησης: {feedback}",
    reviewer_concept="{focus}: {part} ({t})",
    reviewer_parts=("βασικά", "στην πράξη"),
    reviewer_summary="Απαντά στο αίτημα του αξιολογητή «{focus}».",
    headings=("Γιατί μετράει", "Βασικές ιδέες", "Λυμένο παράδειγμα", "Εξάσκηση"),
    why="Ο στόχος σου είναι να {goal}. Στο {level} επίπεδο, το *{concept}* είναι ένα από τα "
    "κομμάτια που κάνουν το υπόλοιπο {t} πιο εύκολο να το μάθεις και να το εφαρμόσεις σε {app}.",
    key_ideas=(
        "Ξεκίνα από ένα συγκεκριμένο παράδειγμα και μετά διατύπωσε τον γενικό κανόνα.",
        "Οι περισσότερες δυσκολίες προέρχονται από λίγες επαναλαμβανόμενες παρανοήσεις.",
        "Γράψε τι περιμένεις πριν δοκιμάσεις και σύγκρινέ το με το αποτέλεσμα.",
        "Η σύντομη, συχνή εξάσκηση νικά τις μακριές, σπάνιες συνεδρίες.",
        "Μάθε το λεξιλόγιο: η ακριβής ονομασία διευκολύνει τη σκέψη.",
    ),
    steps=(
        "Διάλεξε μια μικρή, πραγματική εργασία για {app}.",
        "Λύσε την μόνο με ό,τι καλύπτει αυτή η έννοια στο {t}.",
        "Εξήγησε δυνατά κάθε βήμα, σαν να διδάσκεις κάποιον άλλον.",
        "Άλλαξε μία λεπτομέρεια της εργασίας και πρόβλεψε τι αλλάζει στη λύση.",
    ),
    practice="Αφιέρωσε {minutes} λεπτά σε μια παραλλαγή του παραπάνω παραδείγματος και μετά "
    "γράψε τρεις προτάσεις για ό,τι σε εξέπληξε.",
    resources=("Επίσημη τεκμηρίωση του {t}", "Εγκυκλοπαίδεια: {concept}", "Βίντεο: {concept}"),
    documentation="τεκμηρίωση",
    quiz=(
        (
            "Ποιο είναι το καλύτερο πρώτο βήμα για να μάθεις «{concept}»;",
            "Να δουλέψεις ένα μικρό συγκεκριμένο παράδειγμα",
            (
                "Να αποστηθίσεις πρώτα κάθε λεπτομέρεια",
                "Να το παραλείψεις και να γυρίσεις αργότερα",
                "Να διαβάσεις χωρίς να δοκιμάσεις τίποτα",
            ),
        ),
        (
            "Πώς βοηθά το «{concept}» για {app};",
            "Είναι θεμέλιο στο οποίο στηρίζονται επόμενες δεξιότητες {t}",
            ("Δεν έχει πρακτική χρήση", "Αντικαθιστά κάθε άλλη δεξιότητα", "Αφορά μόνο ειδικούς"),
        ),
        (
            "Κόλλησες σε μια άσκηση. Τι κάνεις;",
            "Μικραίνεις το πρόβλημα ως τη μικρότερη περίπτωση που ακόμα αποτυγχάνει",
            (
                "Ξεκινάς από την αρχή",
                "Περιμένεις την έμπνευση",
                "Αντιγράφεις μια λύση χωρίς να τη διαβάσεις",
            ),
        ),
    ),
    full_stop=".",
)

LANGUAGES: Mapping[str, Language] = {
    language.code: language for language in (ENGLISH, CHINESE, JAPANESE, RUSSIAN, ARABIC, GREEK)
}

# Script of a letter → the language the offline model writes for it.
_SCRIPTS: tuple[tuple[str, str], ...] = (
    ("\u3040-\u30ff\u31f0-\u31ff", "ja"),  # kana: Japanese, even next to Han characters
    ("\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff", "zh"),
    ("\u0400-\u052f", "ru"),
    ("\u0600-\u06ff\u0750-\u077f\ufb50-\ufdff\ufe70-\ufeff", "ar"),
    ("\u0370-\u03ff\u1f00-\u1fff", "el"),
)
_PATTERNS = tuple((re.compile(f"[{chars}]"), code) for chars, code in _SCRIPTS)
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")


def language_of(goal: str) -> Language:
    """The language of `goal`, told from its script: the script with the most letters, a Han
    or kana character counting twice (it is a word or half of one); any kana means Japanese.
    English for Latin script and every script without words of its own here."""
    if _PATTERNS[0][0].search(goal):
        return JAPANESE
    counts = {code: len(pattern.findall(goal)) for pattern, code in _PATTERNS[1:]}
    counts["zh"] *= 2
    code, count = max(counts.items(), key=lambda item: item[1])
    return LANGUAGES[code] if count > len(_LATIN.findall(goal)) else ENGLISH
