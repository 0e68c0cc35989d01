"""The behavioural laws of the reference bank world, as parameter tables.

Everything a domain reader may want to change lives here, named; the mechanics that apply these
numbers live in ``behaviour.py``. docs/reference-world.md explains each law and how it is tested.
"""

from __future__ import annotations

import numpy as np

# ------------------------------------------------------------------------------------ vocabularies
SEGMENTS = ("student", "young_professional", "family", "retiree", "high_net_worth", "small_business")
SEGMENT_SHARE = np.array([0.14, 0.24, 0.28, 0.18, 0.04, 0.12])
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
REGIONS = ("capital", "north", "south", "east", "west")
REGION_SHARE = np.array([0.30, 0.20, 0.20, 0.15, 0.15])
CHANNELS = ("app", "web", "branch")
MERCHANTS = ("grocery", "restaurants", "transport", "retail", "utilities", "entertainment", "travel",
             "gift_cards", "luxury")
PRODUCTS = ("credit_card", "mortgage", "home_insurance", "savings", "travel_card")
EVENT_TYPES = ("login", "income", "card_payment", "card_declined", "fee", "offer_shown", "offer_click",
               "offer_purchase", "product_inquiry", "account_closed")
AMOUNT_TYPES = ("income", "card_payment", "card_declined", "fee")
INCOME_BANDS = ("low", "mid", "high", "very_high")
INCOME_BAND_EDGES = np.array([1_500.0, 3_500.0, 8_000.0])  # monthly income thresholds between the bands

CATEGORICAL_ATTRIBUTES = {"segment": SEGMENTS, "age_band": AGE_BANDS, "income_band": INCOME_BANDS,
                          "region": REGIONS, "preferred_channel": CHANNELS}  # the users table, with tenure_months


def world_vocabulary():
    """What a scenario may name in the reference world (``scenarios.scenario.Vocabulary``): its event types,
    the terminal ``account_closed``, its marks, the users table's attributes and the ``macro_index`` context."""
    from twinsim.scenarios.scenario import Vocabulary

    return Vocabulary(event_types=list(EVENT_TYPES), terminal_types=["account_closed"],
                      marks={"channel": list(CHANNELS), "merchant_category": list(MERCHANTS),
                             "product": list(PRODUCTS)},
                      categorical_attributes={k: list(v) for k, v in CATEGORICAL_ATTRIBUTES.items()},
                      numeric_attributes=["tenure_months"], context_columns=["macro_index"])


# ------------------------------------------------------------------------------------ per segment
# Rows follow SEGMENTS. Probabilities over AGE_BANDS.
AGE_BAND_P = np.array([
    [0.97, 0.03, 0.00, 0.00, 0.00, 0.00],
    [0.10, 0.75, 0.15, 0.00, 0.00, 0.00],
    [0.00, 0.20, 0.50, 0.30, 0.00, 0.00],
    [0.00, 0.00, 0.00, 0.00, 0.15, 0.85],
    [0.00, 0.05, 0.20, 0.35, 0.25, 0.15],
    [0.00, 0.15, 0.35, 0.35, 0.15, 0.00],
])
MONTHLY_INCOME_MEDIAN = np.array([900.0, 3_200.0, 4_200.0, 1_900.0, 15_000.0, 5_000.0])
MONTHLY_INCOME_SIGMA = 0.35
TENURE_MONTHS_MEAN = np.array([18.0, 40.0, 90.0, 200.0, 120.0, 70.0])  # exponential, capped
MAX_TENURE_MONTHS = 480
BIWEEKLY_PAY_P = np.array([0.20, 0.40, 0.35, 0.00, 0.10, 0.00])
# Day of month of a monthly payday (a value of 31 means the last day of the month).
PAYDAY_DAYS = np.array([1, 3, 15, 25, 28, 31])
PAYDAY_DAY_P = np.array([
    [0.40, 0.00, 0.30, 0.15, 0.00, 0.15],
    [0.15, 0.00, 0.15, 0.35, 0.15, 0.20],
    [0.15, 0.00, 0.15, 0.35, 0.15, 0.20],
    [0.45, 0.55, 0.00, 0.00, 0.00, 0.00],
    [0.20, 0.00, 0.10, 0.30, 0.10, 0.30],
    [0.30, 0.00, 0.30, 0.10, 0.00, 0.30],
])
CHANNEL_P = np.array([
    [0.85, 0.13, 0.02],
    [0.75, 0.22, 0.03],
    [0.60, 0.30, 0.10],
    [0.20, 0.35, 0.45],
    [0.50, 0.30, 0.20],
    [0.45, 0.45, 0.10],
])
PREFERRED_CHANNEL_USE = 0.80  # share of a user's sessions on their preferred channel

# Logins per day (mean over users; each user's own rate is gamma-distributed around it).
LOGIN_RATE = np.array([0.45, 0.40, 0.32, 0.18, 0.30, 0.45])
LOGIN_RATE_SHAPE = 2.0  # gamma shape: smaller means more heterogeneous return intervals
PAYDAY_LOGIN_BOOST = 1.5  # extra logins on payday: people check that the salary arrived
# Card payments per day (mean over users, gamma-distributed like logins).
SPEND_RATE = np.array([0.45, 0.55, 0.65, 0.35, 0.70, 0.70])
SPEND_RATE_SHAPE = 3.0
# Merchant category mix (rows SEGMENTS, columns MERCHANTS), outside the seasonal windows.
MERCHANT_P = np.array([
    [0.30, 0.25, 0.15, 0.15, 0.03, 0.09, 0.02, 0.01, 0.00],
    [0.28, 0.22, 0.12, 0.16, 0.06, 0.09, 0.05, 0.01, 0.01],
    [0.42, 0.12, 0.10, 0.17, 0.10, 0.05, 0.03, 0.01, 0.00],
    [0.45, 0.12, 0.06, 0.12, 0.15, 0.05, 0.04, 0.01, 0.00],
    [0.20, 0.22, 0.08, 0.15, 0.05, 0.08, 0.10, 0.02, 0.10],
    [0.30, 0.15, 0.20, 0.15, 0.10, 0.04, 0.05, 0.01, 0.00],
])
# Amount per category: log-normal median and sigma (columns follow MERCHANTS).
AMOUNT_MEDIAN = np.array([35.0, 28.0, 15.0, 60.0, 90.0, 25.0, 250.0, 50.0, 400.0])
AMOUNT_SIGMA = np.array([0.6, 0.6, 0.7, 0.8, 0.5, 0.7, 0.9, 0.5, 0.9])
SEGMENT_AMOUNT_SCALE = np.array([0.55, 1.0, 1.1, 0.85, 2.5, 1.3])
# The rare high-net-worth segment also draws a Pareto multiplier on travel and luxury: the top 1 % of
# card amounts comes mostly from it.
HNW_PARETO_ALPHA = 1.6
HNW_PARETO_CAP = 40.0  # the multiplier is capped: no single card payment is absurd
HNW_TAIL_MERCHANTS = ("travel", "luxury")

# ------------------------------------------------------------------------------------ calendar
LOGIN_WEEKDAY = np.array([1.10, 1.05, 1.00, 1.00, 1.05, 0.78, 0.72])  # Monday..Sunday
SPEND_WEEKDAY = np.array([0.88, 0.90, 0.95, 1.00, 1.20, 1.30, 0.80])
# Hour-of-day profiles: (centre hour, width, weight) bumps over a small floor, per segment for logins.
LOGIN_HOUR_BUMPS = {
    "student": [(9.5, 1.5, 0.15), (13.0, 1.5, 0.20), (22.0, 2.0, 0.65)],
    "young_professional": [(7.5, 1.0, 0.30), (12.5, 1.0, 0.25), (20.5, 1.5, 0.45)],
    "family": [(7.0, 1.0, 0.25), (12.5, 1.2, 0.20), (21.0, 1.2, 0.55)],
    "retiree": [(9.5, 1.5, 0.50), (14.0, 2.0, 0.35), (19.0, 1.5, 0.15)],
    "high_net_worth": [(7.0, 1.0, 0.35), (13.0, 1.5, 0.25), (21.0, 1.5, 0.40)],
    "small_business": [(8.0, 1.0, 0.40), (13.0, 2.0, 0.30), (21.5, 1.5, 0.30)],
}
SPEND_HOUR_BUMPS = [(9.0, 1.5, 0.15), (12.5, 1.2, 0.35), (18.0, 2.0, 0.50)]
INCOME_HOURS = (2, 7)  # salary batches post between 02:00 and 07:00
# Seasonality: (first month-day, last month-day) windows.
GIFT_SEASON = ((11, 25), (12, 24))  # gift cards x GIFT_CARD_BOOST, retail x 2, spending x 1.25
GIFT_CARD_BOOST = 12.0
GIFT_SEASON_SPEND = 1.25
GIFT_SEASON_RETAIL_BOOST = 2.0
SUMMER_SEASON = ((6, 15), (8, 31))  # travel x SUMMER_TRAVEL_BOOST
SUMMER_TRAVEL_BOOST = 3.5

# ------------------------------------------------------------------------------------ offers
OFFER_SHOW_P = 0.25  # chance that a login shows an offer
# Which offer the bank shows (rows SEGMENTS, columns PRODUCTS).
OFFER_TARGETING = np.array([
    [0.40, 0.05, 0.05, 0.30, 0.20],
    [0.30, 0.25, 0.10, 0.20, 0.15],
    [0.20, 0.25, 0.25, 0.20, 0.10],
    [0.10, 0.02, 0.28, 0.45, 0.15],
    [0.15, 0.20, 0.15, 0.30, 0.20],
    [0.35, 0.15, 0.15, 0.20, 0.15],
])
# Mean latent preference per segment and product; each user adds N(0, AFFINITY_SD).
AFFINITY_MEAN = np.array([
    [0.8, -1.5, -1.5, 0.2, 0.6],
    [0.4, 0.5, -0.2, 0.3, 0.4],
    [0.0, 0.4, 0.5, 0.2, 0.0],
    [-0.6, -1.5, 0.4, 0.7, 0.2],
    [0.0, 0.3, 0.2, 0.5, 0.8],
    [0.6, 0.0, 0.0, 0.0, 0.2],
])
AFFINITY_SD = 0.8
CLICK_BASE = -2.3
CLICK_FATIGUE_SAME = 0.45  # per recent showing of the same offer (decays by FATIGUE_DECAY a day)
CLICK_FATIGUE_ANY = 0.12  # per recent showing of any offer
FATIGUE_DECAY = 0.93
CLICK_RECENCY_PENALTY = 1.0  # the same offer was clicked in the last RECENCY_DAYS
RECENCY_DAYS = 30
PURCHASE_BASE = -1.4
PURCHASE_AFFINITY = 0.6
OWNED_AFFINITY_DROP = 4.0  # after buying, a product is rarely wanted again

# ------------------------------------------------------------------------------------ life-stage chain
MORTGAGE_INQUIRY_DAILY = np.array([0.00010, 0.00070, 0.00050, 0.00003, 0.00040, 0.00040])
MORTGAGE_INQUIRY_AFTER_CLICK = 0.5
HOME_INSURANCE_FOLLOW_P = 0.55  # a mortgage inquiry leads to home-insurance interest ...
HOME_INSURANCE_DELAY_GAMMA = (3.0, 10.0)  # ... after Gamma(shape, scale) days (mean 30, ~all < 90)
CHAIN_WINDOW_DAYS = 90
HOME_INSURANCE_CHAIN_AFFINITY = 1.5  # home-insurance offers are clicked more while the chain is open
HOME_INSURANCE_INQUIRY_DAILY = 0.00008  # background rate without a mortgage

# ------------------------------------------------------------------------------------ money and friction
START_BALANCE_MONTHS = (1.0, 2.0)  # uniform, in months of income: covers one pay cycle
OVERDRAFT_LIMIT_MONTHS = 0.4
SPEND_PROPENSITY_SD = 0.15  # log-normal spread of how much more (or less) than planned users pay
BUDGET_SHARE = 0.95  # share of income a user plans to spend; the rest accumulates
OVERDRAFT_SPEND_FACTOR = 0.6  # users below zero make fewer card payments
SPEND_ENGAGEMENT_EXPONENT = 0.3  # card payments scale with engagement ** this (logins with engagement)
INCOME_NOISE_SD = 0.02  # relative noise of each salary deposit
DECLINE_P = 0.002  # background card decline rate
DECLINE_P_OVER_LIMIT = 0.5
FEE_AMOUNT = (12.0, 35.0)  # overdraft fee charged at the end of a day ending below zero
FRICTION_DECAY = 0.97
FEE_FRICTION = 0.5  # friction added by a fee (a decline adds 1)

# ------------------------------------------------------------------------------------ engagement, churn, macro
ENGAGEMENT_REVERSION = 0.03  # Ornstein-Uhlenbeck pull of log-engagement to 0 per day
ENGAGEMENT_NOISE = 0.10
CHURN_BASE_DAILY = np.array([0.00022, 0.00020, 0.00012, 0.00010, 0.00012, 0.00020])
CHURN_DISENGAGEMENT = 1.2
CHURN_FRICTION = 0.35
CHURN_FRICTION_CAP = 5.0
CHURN_COMPETITOR = 0.9  # times a user's standard-normal competitor pull
CHURN_MACRO_STRESS = 6.0  # times max(0, 1 - macro_index / 100)
MACRO_SPEND_EXPONENT = 2.0  # spending scales with (macro_index / 100) ** this
MACRO_DOWNTURN_DEPTH = (12.0, 18.0)  # index points below 100 at the trough
MACRO_DOWNTURN_DAYS = 90
MACRO_CYCLE_DAYS = 365  # one downturn in each such block of days counted from the window start ...
MACRO_DOWNTURN_START = (0.35, 0.55)  # ... beginning at a uniform fraction of the block
