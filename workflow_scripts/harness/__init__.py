"""The ground floor every stage stands on: the job context a stage entry receives (``context``), the
stage harness (``stage``: folders, identity, finaliser) and device selection (``device``). It imports
no stage package and nothing of the launcher; the launcher builds a context and hands it over."""
