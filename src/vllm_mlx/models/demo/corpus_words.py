"""The word lists the demo tokenizer's training corpus is made from (a data table)."""

NOUNS = """
time year people way day man woman child world life hand part place case week
company system program question work government number night point home water
room mother area money story fact month lot right study book eye job word
business issue side kind head house service friend father power hour game line
end member law car city community name president team minute idea kid body
information back parent face others level office door health person art war
history party result change morning reason research girl guy moment air teacher
force education foot boy age policy music market sense nation plan college
interest death experience effect class control care field development role
effort rate heart drug show leader light voice wife police mind price report
decision son view relationship town road arm difference value building action
model season society tax director position player record paper space ground
form event official matter center couple site project activity star table need
court oil situation cost industry figure street image phone data picture
practice piece land product doctor wall patient worker news test movie north
love support technology step baby computer type attention film tree source
organization hair window evidence population site blood sea weather garden
river mountain forest island ocean bridge train station airport coffee tea
bread apple orange cat dog bird fish horse flower rain snow sun moon sky cloud
file folder server client request response error message user token model
function value list string number object array key query result network cache
memory thread process engine batch request stream server answer problem
language sentence letter page chapter window screen keyboard button menu
""".split()

VERBS = """
be have do say go get make know think take see come want look use find give
tell work call try ask need feel become leave put mean keep let begin seem help
talk turn start show hear play run move like live believe hold bring happen
write provide sit stand lose pay meet include continue set learn change lead
understand watch follow stop create speak read allow add spend grow open walk
win offer remember love consider appear buy wait serve die send expect build
stay fall cut reach kill remain suggest raise pass sell require report decide
pull return explain hope develop carry break receive agree support hit produce
eat cover catch draw choose cause point listen plan compute parse load save
print check update delete test fix answer visit cook paint travel
""".split()

ADJECTIVES = """
good new first last long great little own other old right big high different
small large next early young important few public bad same able simple clear
happy quick slow bright dark warm cold hot cool quiet loud soft hard easy
strong weak green blue red yellow white black free full special sure real
best better whole human local late hard major general certain personal open
short true false empty possible final main recent private current natural
significant similar hot dead central happy serious ready left physical
fast tiny huge fresh clean rich poor deep wide heavy light gentle kind brave
calm curious careful friendly useful beautiful strange ancient modern
""".split()

ADVERBS = """
also very often however too usually really early never always sometimes
together likely simply generally instead actually again rather almost
especially ever quickly probably already soon slowly quietly finally
today here there now then still just only even well
""".split()

PREPOSITIONS = """
in on at by for with about against between into through during before after
above below to from up down over under near across behind beyond around
""".split()

SUBJECTS = """
I you we they he she it people everyone nobody someone the_team my_friend
our_teacher the_user the_model this_system
""".split()

IRREGULAR_PAST = {
    "be": "was", "have": "had", "do": "did", "say": "said", "go": "went",
    "get": "got", "make": "made", "know": "knew", "think": "thought",
    "take": "took", "see": "saw", "come": "came", "give": "gave",
    "tell": "told", "find": "found", "feel": "felt", "become": "became",
    "leave": "left", "put": "put", "mean": "meant", "keep": "kept",
    "let": "let", "begin": "began", "hear": "heard", "run": "ran",
    "hold": "held", "bring": "brought", "write": "wrote", "sit": "sat",
    "stand": "stood", "lose": "lost", "pay": "paid", "meet": "met",
    "set": "set", "lead": "led", "understand": "understood", "speak": "spoke",
    "read": "read", "spend": "spent", "grow": "grew", "win": "won",
    "buy": "bought", "send": "sent", "build": "built", "fall": "fell",
    "cut": "cut", "sell": "sold", "break": "broke", "hit": "hit",
    "eat": "ate", "catch": "caught", "draw": "drew", "choose": "chose",
    "die": "died",
}

UNICODE_WORDS = """
héllo café naïve résumé façade über straße crème brûlée piñata jalapeño
日本 日本語 東京 こんにちは ありがとう 你好 世界 中文 北京 한국어 안녕하세요
привет мир спасибо γεια σου κόσμε שלום مرحبا नमस्ते
😀 😂 🚀 👍 🎉 ❤️ 🔥 ✨ 🌍 🤖 ☕ ✅ → ← ≥ ≤ ± × ÷ € £ ¥ © ° … “ ” ‘ ’ — –
""".split()
