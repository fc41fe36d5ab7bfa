"""The words of the sample-log generator: categories, brands, products, cross-category themes, styles, prices.

Two vocabularies describe the same tastes on purpose. Ads speak the advertiser's words (``ad`` lists,
``tagline``); users speak their own (``user``, ``searches``, ``talk``, a product's ``said``), which overlap
with the ads' only in part: "eco-friendly" in an ad, "low waste" or "planet friendly" in a query. A model
that understands the meaning of text can link them; exact word matching links only some.

Brand names are invented.
"""

from __future__ import annotations

from typing import NamedTuple


class Product(NamedTuple):
    name: str  # as an ad names it
    theme: str | None  # the cross-category theme it belongs to, if any
    said: tuple[str, ...]  # how users name it in searches (paraphrases, sometimes the ad's own words)


def _p(name: str, theme: str | None, *said: str) -> Product:
    return Product(name, theme, said or (name,))


# Per category: invented brands (the advertisers), selling points, and searches that reveal no taste.
CATEGORIES: dict[str, dict[str, list[str]]] = {
    "travel": {"brands": ["Wanderly", "Sunpath", "Atlas Voyages", "Voyago"],
               "benefits": ["free cancellation", "breakfast included", "no booking fees", "price match guarantee"],
               "queries": ["hotel deals", "summer holiday", "travel insurance", "flights to europe", "city break"]},
    "electronics": {"brands": ["Voltra", "Lumen", "Pixelcore", "Sonari"],
                    "benefits": ["two-year warranty", "free next-day delivery", "trade-in bonus", "30-day returns"],
                    "queries": ["laptop deals", "new phone", "tv sale", "best headphones", "phone charger"]},
    "fashion": {"brands": ["Threadwell", "Maison Rue", "Northloom", "Kinfolk Denim"],
                "benefits": ["free returns", "new season styles", "members save 20%", "free alterations"],
                "queries": ["summer dress", "winter coat", "leather boots", "new sneakers", "designer sale"]},
    "fitness": {"brands": ["Stridewell", "PeakForm", "Ironleaf", "Flexa"],
                "benefits": ["first month free", "coach-designed plans", "lifetime warranty", "quiet operation"],
                "queries": ["home gym", "weight loss", "protein shake", "gym membership", "workout plan"]},
    "finance": {"brands": ["Brightbank", "Ledgerly", "Coinwise", "Harbor Trust"],
                "benefits": ["0% APR for 12 months", "FDIC insured", "no minimum balance", "instant approval"],
                "queries": ["savings rates", "credit card rewards", "mortgage rates", "investing app",
                            "insurance quote"]},
    "gaming": {"brands": ["Nexplay", "Pixel Forge", "Arcadia", "Critical Hit"],
               "benefits": ["pre-order bonus", "free DLC", "cross-play", "limited stock"],
               "queries": ["console deals", "new releases", "game pass", "vr games", "controller"]},
    "home": {"brands": ["Hearthly", "Nordhus", "Casa Verde", "Dwellwise"],
             "benefits": ["100-night trial", "free installation", "five-year guarantee", "free assembly"],
             "queries": ["new mattress", "robot vacuum", "garden furniture", "home decor ideas", "kitchen upgrade"]},
    "food": {"brands": ["Green Fork", "Bean & Bloom", "Harvest Box", "Urban Oven"],
             "benefits": ["first box half price", "free delivery", "chef-designed recipes", "seasonal menu"],
             "queries": ["meal kits", "pizza near me", "wine deals", "vegan recipes", "grocery delivery"]},
    "auto": {"brands": ["Roadwise", "Voltway", "Trekline", "Gearhaus"],
             "benefits": ["test drive today", "0% finance", "free fitting", "roadside assistance"],
             "queries": ["electric car", "car insurance", "new tyres", "ev charger", "hybrid suv"]},
    "beauty": {"brands": ["Glowlab", "Pure Petal", "Dermaura", "Velvet Bloom"],
               "benefits": ["free samples", "visible results in 2 weeks", "refillable packaging", "gift wrap"],
               "queries": ["skincare routine", "best serum", "perfume gift", "sunscreen", "hair dryer"]},
    "books": {"brands": ["Inkwell Press", "Pageturner", "Moonlit Books", "Quillhouse"],
              "benefits": ["first audiobook free", "free shipping", "author event tickets", "book club picks"],
              "queries": ["new thriller", "fantasy books", "audiobooks", "e-reader", "biography"]},
    "pets": {"brands": ["Pawsome", "Tailwind", "Furbest", "Happy Paws"],
             "benefits": ["first bag free", "24/7 vet chat", "free delivery", "satisfaction guarantee"],
             "queries": ["dog food", "cat toys", "pet supplies", "dog walker", "kitten food"]},
}

# What each category sells; a product may belong to a theme that crosses categories.
PRODUCTS: dict[str, list[Product]] = {
    "travel": [
        _p("marathon weekend in Berlin", "running", "berlin marathon trip", "race travel package"),
        _p("coffee farm tour in Colombia", "coffee", "coffee plantation trip", "colombia coffee tour"),
        _p("national park cabin", "outdoors", "cabin in the woods", "log cabin getaway"),
        _p("cooking class in Tuscany", "cooking", "italian cooking holiday", "pasta course in italy"),
        _p("yoga retreat in Bali", "wellness", "wellness retreat", "bali yoga holiday"),
        _p("photo tour of Iceland", "photography", "northern lights photo trip", "iceland photography trip"),
        _p("dog-friendly cottage", "pets", "holiday cottage that allows dogs", "pet friendly rental"),
        _p("cycling holiday in Provence", "cycling", "bike tour in france", "cycling trip"),
        _p("beach resort in Crete", None, "greek beach hotel", "crete holiday"),
        _p("city break in Prague", None, "prague weekend", "prague hotel"),
    ],
    "electronics": [
        _p("sports earbuds", "running", "earphones for running", "sweatproof earbuds"),
        _p("action camera", "outdoors", "helmet camera", "adventure cam"),
        _p("mirrorless camera", "photography", "new camera body", "mirrorless camera"),
        _p("camera drone", "photography", "drone with camera", "aerial photography drone"),
        _p("gaming laptop", "gaming", "laptop for games", "gaming notebook"),
        _p("noise-cancelling headphones", "home_office", "anc headphones", "headphones that block noise"),
        _p("4K webcam", "home_office", "webcam for zoom", "camera for video calls"),
        _p("bike computer", "cycling", "cycling gps", "bike speedometer"),
        _p("sleep tracker", "wellness", "sleep monitor", "sleep tracking ring"),
        _p("4K OLED TV", None, "new tv", "big screen television"),
        _p("USB-C charger", None, "fast phone charger", "usb c plug"),
    ],
    "fashion": [
        _p("running shoes", "running", "trainers for jogging", "running trainers"),
        _p("waterproof hiking jacket", "outdoors", "rain jacket for hiking", "outdoor shell jacket"),
        _p("cycling jersey", "cycling", "bike shirt", "cycling top"),
        _p("yoga leggings", "wellness", "leggings for yoga", "stretchy workout pants"),
        _p("leather camera strap", "photography", "camera neck strap", "strap for my camera"),
        _p("linen summer dress", None, "summer dress", "linen dress"),
        _p("wool overcoat", None, "warm winter coat", "wool coat"),
        _p("leather ankle boots", None, "ankle boots", "leather boots"),
    ],
    "fitness": [
        _p("running watch", "running", "gps watch", "watch for runners"),
        _p("trekking poles", "outdoors", "walking poles", "hiking sticks"),
        _p("yoga mat", "wellness", "exercise mat", "non slip mat"),
        _p("spin bike", "cycling", "indoor bike", "exercise bike"),
        _p("speed jump rope", "running", "skipping rope", "jump rope"),
        _p("adjustable dumbbells", None, "dumbbell set", "free weights"),
        _p("protein powder", None, "whey protein", "protein supplement"),
        _p("rowing machine", None, "rower", "indoor rowing machine"),
    ],
    "finance": [
        _p("pet insurance", "pets", "insurance for my dog", "vet bill cover"),
        _p("bike insurance", "cycling", "bicycle theft cover", "insurance for my bike"),
        _p("freelancer business account", "home_office", "bank account for freelancers", "self employed banking"),
        _p("cashback credit card", None, "cash back card", "credit card with rewards"),
        _p("high-yield savings account", None, "best savings account", "high interest savings"),
        _p("mortgage refinance", None, "remortgage", "refinance my home loan"),
        _p("budgeting app", None, "money tracker app", "expense tracker"),
    ],
    "gaming": [
        _p("open-world RPG", "gaming", "open world game", "new rpg"),
        _p("mechanical keyboard", "gaming", "clicky keyboard", "gaming keyboard"),
        _p("gaming headset", "gaming", "headset with mic", "gaming headphones"),
        _p("console bundle", "gaming", "console with games", "new console"),
        _p("racing wheel", "gaming", "steering wheel for games", "sim racing wheel"),
        _p("strategy game", "gaming", "turn based game", "strategy pc game"),
        _p("dance fitness game", "wellness", "workout game", "exercise video game"),
        _p("virtual ride app", "cycling", "indoor cycling app", "turbo trainer app"),
    ],
    "home": [
        _p("espresso machine", "coffee", "coffee maker", "espresso maker"),
        _p("coffee grinder", "coffee", "burr grinder", "bean grinder"),
        _p("cast iron skillet", "cooking", "cast iron pan", "frying pan"),
        _p("stand mixer", "cooking", "kitchen mixer", "baking mixer"),
        _p("standing desk", "home_office", "sit stand desk", "height adjustable desk"),
        _p("ergonomic office chair", "home_office", "desk chair for back pain", "office chair"),
        _p("pet-proof sofa cover", "pets", "couch cover for dogs", "sofa protector"),
        _p("gaming chair", "gaming", "chair for gaming", "gamer chair"),
        _p("robot vacuum", None, "robot hoover", "vacuum robot"),
        _p("memory foam mattress", None, "new mattress", "foam mattress"),
    ],
    "food": [
        _p("artisan coffee beans", "coffee", "fresh roasted coffee", "specialty coffee beans"),
        _p("energy gels", "running", "running gels", "race fuel"),
        _p("meal-kit delivery", "cooking", "recipe box", "meal kit"),
        _p("spice collection", "cooking", "spice set", "herbs and spices"),
        _p("herbal tea sampler", "wellness", "calming tea", "herbal tea"),
        _p("camping meal packs", "outdoors", "freeze dried meals", "trail food"),
        _p("pizza delivery", None, "pizza near me", "order pizza"),
        _p("wine club", None, "wine subscription", "monthly wine box"),
    ],
    "auto": [
        _p("bike rack", "cycling", "car bike carrier", "bike rack"),
        _p("roof box", "outdoors", "car roof storage", "roof top carrier"),
        _p("dog car guard", "pets", "dog barrier for car", "pet car guard"),
        _p("electric SUV", None, "electric suv", "ev suv"),
        _p("dash cam", None, "car camera", "dashboard camera"),
        _p("all-season tyres", None, "all weather tires", "new tyres"),
        _p("car insurance", None, "car insurance quote", "auto insurance"),
    ],
    "beauty": [
        _p("anti-chafe balm", "running", "chafing cream", "anti chafing stick"),
        _p("mineral sunscreen", "outdoors", "sun cream", "spf for outdoors"),
        _p("aromatherapy oil set", "wellness", "essential oils", "relaxing oils"),
        _p("face mask set", "wellness", "sheet masks", "face masks"),
        _p("vitamin C serum", None, "vitamin c serum", "brightening serum"),
        _p("hair dryer", None, "blow dryer", "hair dryer"),
        _p("fragrance set", None, "perfume set", "cologne gift"),
    ],
    "books": [
        _p("marathon training plan", "running", "marathon plan book", "running training guide"),
        _p("coffee brewing guide", "coffee", "book about coffee", "brewing handbook"),
        _p("trail guidebook", "outdoors", "hiking guide book", "walking routes book"),
        _p("weeknight cookbook", "cooking", "recipe book", "cookbook"),
        _p("fantasy saga", "gaming", "fantasy book series", "epic fantasy novels"),
        _p("mindfulness guide", "wellness", "book on meditation", "mindfulness book"),
        _p("photography handbook", "photography", "photography book", "learn photography book"),
        _p("puppy training book", "pets", "dog training book", "how to train a puppy"),
        _p("productivity planner", "home_office", "daily planner", "work planner"),
        _p("crime thriller", None, "new thriller", "crime novel"),
    ],
    "pets": [
        _p("grain-free dog food", "pets", "dog food without grain", "healthy dog food"),
        _p("cat tree", "pets", "cat climbing tower", "scratching post"),
        _p("GPS pet tracker", "pets", "dog tracker", "pet tracker"),
        _p("orthopedic dog bed", "pets", "dog bed for old dogs", "dog bed"),
        _p("dog running harness", "running", "harness for running with my dog", "canicross harness"),
        _p("hiking dog backpack", "outdoors", "dog pack for hikes", "dog backpack"),
        _p("aquarium kit", None, "fish tank", "aquarium starter set"),
    ],
}

# Tastes that cross categories: what ads say about them, what users search for and say in reviews.
THEMES: dict[str, dict[str, list[str]]] = {
    "running": {"tagline": ["Built for runners.", "Made for every mile.", "Ready for race day."],
                "searches": ["marathon plan", "couch to 5k", "half marathon training", "trail running routes",
                             "how to run faster", "running club near me"],
                "talk": ["my marathon training", "my morning runs", "race day", "long runs"]},
    "coffee": {"tagline": ["For the perfect cup.", "Brewed for coffee lovers.", "Barista quality at home."],
               "searches": ["latte art at home", "pour over technique", "best beans for espresso",
                            "home barista setup", "cold brew recipe"],
               "talk": ["my morning coffee", "my pour overs", "weekend lattes"]},
    "outdoors": {"tagline": ["Made for the trail.", "Ready for the great outdoors.", "Built for adventure."],
                 "searches": ["hiking trails nearby", "camping checklist", "weekend in the mountains",
                              "backpacking gear", "wild camping spots"],
                 "talk": ["my hiking trips", "camping weekends", "long hikes"]},
    "cooking": {"tagline": ["For home cooks.", "Cook like a chef.", "Made for your kitchen."],
                "searches": ["easy dinner recipes", "homemade pasta", "weeknight meals", "how to bake sourdough",
                             "one pot recipes"],
                "talk": ["cooking at home", "family dinners", "baking on weekends"]},
    "gaming": {"tagline": ["Level up your play.", "Built for gamers.", "Made for game night."],
               "searches": ["new pc games", "best multiplayer games", "esports tournaments", "game night ideas",
                            "open world games"],
               "talk": ["late night gaming", "my gaming setup", "online matches"]},
    "wellness": {"tagline": ["For mindful living.", "Your daily calm.", "Made for self-care."],
                 "searches": ["meditation for beginners", "stress relief tips", "morning yoga flow",
                              "self care routine", "better sleep tips"],
                 "talk": ["my yoga practice", "winding down at night", "my self care routine"]},
    "photography": {"tagline": ["Capture every moment.", "Made for photographers.", "Frame the perfect shot."],
                    "searches": ["landscape photography tips", "portrait lighting", "golden hour shots",
                                 "camera settings for beginners", "photo editing tutorial"],
                    "talk": ["my photo walks", "landscape shots", "shooting portraits"]},
    "pets": {"tagline": ["Loved by pets.", "For happy dogs and cats.", "Made for pet parents."],
             "searches": ["puppy training tips", "dog friendly walks", "best food for my cat",
                          "adopting a rescue dog", "vet near me"],
             "talk": ["my dog", "our rescue cat", "walks with my puppy"]},
    "cycling": {"tagline": ["Made for riders.", "Built for the road.", "Ride further."],
                "searches": ["road bike routes", "cycling to work", "gravel riding", "bike maintenance tips",
                             "sportive training"],
                "talk": ["my weekend rides", "commuting by bike", "long rides"]},
    "home_office": {"tagline": ["Made for remote work.", "Upgrade your home office.", "Work from anywhere."],
                    "searches": ["home office setup", "remote work tips", "desk ergonomics",
                                 "video call lighting", "focus while working from home"],
                    "talk": ["working from home", "my video calls", "long work days"]},
}

# Attributes an ad can carry in its title (``ad``) and users' own words for them (``user``); ``where``:
# the categories an attribute makes sense in (None: all).
STYLES: dict[str, dict] = {
    "sustainable": {"ad": ["sustainable", "eco-friendly", "recycled"],
                    "user": ["eco friendly", "sustainable", "low waste", "planet friendly", "ethically made"],
                    "where": None},
    "vintage": {"ad": ["vintage", "retro", "heritage"],
                "user": ["vintage", "retro", "old school", "throwback", "classic style"],
                "where": ["fashion", "home", "travel", "electronics", "books", "auto", "gaming"]},
    "minimalist": {"ad": ["minimalist", "sleek", "clean-lined"],
                   "user": ["minimalist", "simple", "understated", "no frills", "clean design"],
                   "where": ["fashion", "home", "electronics", "fitness", "auto", "books"]},
    "handmade": {"ad": ["handmade", "artisan", "handcrafted"],
                 "user": ["handmade", "artisan", "small batch", "made by hand", "crafted"],
                 "where": ["fashion", "home", "food", "beauty", "pets", "books"]},
    "smart": {"ad": ["smart", "app-connected", "AI-powered"],
              "user": ["smart", "connected", "high tech", "app controlled", "wifi"],
              "where": ["electronics", "home", "fitness", "finance", "auto", "pets", "gaming"]},
    "family": {"ad": ["family", "kid-friendly", "family-friendly"],
               "user": ["family friendly", "for the kids", "kid safe", "for my family", "toddler proof"],
               "where": ["travel", "food", "auto", "home", "books", "finance", "pets", "gaming"]},
    "pro": {"ad": ["pro", "professional-grade", "performance"],
            "user": ["professional", "pro level", "high performance", "serious", "heavy duty"],
            "where": ["electronics", "fitness", "gaming", "beauty", "home", "fashion"]},
    "organic": {"ad": ["organic", "natural", "plant-based"],
                "user": ["organic", "all natural", "chemical free", "plant based", "non toxic"],
                "where": ["food", "beauty", "pets", "fashion"]},
    "compact": {"ad": ["compact", "portable", "lightweight"],
                "user": ["small", "portable", "travel size", "lightweight", "space saving"],
                "where": ["electronics", "home", "fitness", "gaming", "beauty", "pets"]},
}

# Price tiers: the ad's word for its tier (shown in some titles) and how price-minded users phrase searches.
PRICE_TIERS: dict[str, dict] = {
    "budget": {"ad": ["budget", "value", "affordable"], "multiplier": 0.55,
               "prefix": ["cheap", "affordable", "budget", "discount"],
               "suffix": ["under $50", "on sale", "best price", "for less"]},
    "luxury": {"ad": ["luxury", "premium", "deluxe"], "multiplier": 2.2,
               "prefix": ["premium", "high-end", "luxury", "top quality"],
               "suffix": ["top rated", "best in class", "high end"]},
}
# Typical log price per category (a mid-tier ad's price is about exp of this).
LOG_PRICE: dict[str, float] = {"travel": 6.0, "electronics": 5.0, "fashion": 4.3, "fitness": 4.2, "finance": 3.0,
                               "gaming": 4.0, "home": 5.0, "food": 3.4, "auto": 5.5, "beauty": 3.3, "books": 2.9,
                               "pets": 3.5}

TITLE_SUFFIX = ["", " - save 20%", " - new arrivals", " - limited offer", " | shop now", " - free delivery"]
CATEGORY_TAGLINE = "Perfect if you love {category}."

# Review sentences: an opener about the product (by the ad's quality), then a remark that reveals a taste.
REVIEW_OPEN_GOOD = ["Loved the {n}.", "The {n} exceeded my expectations!", "Would buy the {n} again."]
REVIEW_OPEN_BAD = ["The {n} was disappointing.", "Returned the {n}, not as described.", "The {n} broke after a week."]
REVIEW_REMARK_GOOD = {
    "theme": ["Perfect for {x}.", "Great for {x}.", "Bought it for {x}."],
    "style": ["I always look for {x} things.", "Love that it is {x}.", "Just what I wanted: {x}."],
    "brand": ["{x} never lets me down.", "Another good buy from {x}.", "I keep coming back to {x}."],
    "budget": ["Good value for the money.", "Cheap and does the job.", "Affordable, which matters to me."],
    "luxury": ["Worth every penny.", "Pricey but premium quality.", "I do not mind paying for quality."],
}
REVIEW_REMARK_BAD = {
    "theme": ["Not great for {x}.", "I needed it for {x}.", "Useless for {x}."],
    "style": ["I wanted something more {x}.", "Not as {x} as I hoped.", "I prefer {x} things."],
    "brand": ["I should have stuck with {x}.", "Back to {x} next time.", "{x} does this better."],
    "budget": ["Too expensive for what it is.", "Not worth the money.", "Overpriced."],
    "luxury": ["Felt cheap.", "Not the quality I pay for.", "Looks cheaper than in the photos."],
}
