-- Room on each page of runs and of its busiest indexes for the versions a run's
-- transitions write.
--
-- Every transition that changes a run's stage is a non-HOT update (the stage is indexed, by
-- runs_unfinished_by_age): each new version of the row gets an entry in every index whose
-- predicate it meets. Pages packed full (the table's fillfactor 100, an index's 90) leave
-- it no room: a row's new version went to another page, and a full index page that
-- received a new version's entry was first searched for dead entries to remove
-- (_bt_bottomupdel_pass, visiting the heap) or deduplicated (_bt_dedup_pass), about a
-- ninth of PostgreSQL's instructions per run. The dispatcher's write that keeps a Job's
-- facts on a run finished meanwhile changes no indexed column: it is a HOT update (no
-- index entry at all) whenever the row's page has room, which it seldom had.
--
-- Counted with callgrind (benchmarks/transition_sql.py --lifecycle --batch 32 --runs 960:
-- every write of the runs, as the system makes them under load): 684,000 instructions per
-- run with the fillfactors before, 654,000 with the table's at 70, 625,000 with these
-- indexes' at 70 too (all at 60: 629,000; at 80: 657,000); with --runs 4800, 654,000 ->
-- 627,000; with every run dispatched before its completion, 708,000 -> 665,000. At 800
-- runs/s end to end, 8 to 18 % of the updates were HOT instead of 0.5 to 6 %.
--
-- Both settings apply to pages filled or split from now on; nothing is rewritten, and the
-- lock taken (SHARE UPDATE EXCLUSIVE) lets reads and writes of runs go on.
ALTER TABLE runs SET (fillfactor = 70);
ALTER INDEX runs_pkey SET (fillfactor = 70);
ALTER INDEX runs_by_tag_order SET (fillfactor = 70);
ALTER INDEX runs_unfinished_by_age SET (fillfactor = 70);
