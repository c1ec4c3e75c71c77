# _signal, the C module under signal, which the guest imports instead of signal (whose
# enums cost at every boot). typeshed describes only signal; signal re-exports all of
# _signal, its constants wrapped in IntEnums of the same values, so its stub stands in.
from signal import *  # noqa: F403 - a stub re-exporting all of signal is the point
