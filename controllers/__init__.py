"""The healing controller: observe Ray/Serve state, decide with pure policies, act, record."""
