-- Saved audiences: materialised members, a history of who entered and left at each refresh,
-- one call for pg_cron, and forgetting a user everywhere.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_audience;
SET audience.threads = 1;
CREATE SCHEMA a;
CREATE TABLE a.plays (user_id int, song text, genre text, played_at timestamptz);
-- Users 1-6 play rock, 7-12 jazz; user 6 also plays some jazz.
INSERT INTO a.plays
SELECT u, format('%s-%s', CASE WHEN u <= 6 THEN 'rock' ELSE 'jazz' END, (u + k) % 5),
       CASE WHEN u <= 6 THEN 'rock' ELSE 'jazz' END,
       '2024-03-01'::timestamptz + (u + k) * interval '1 hour'
  FROM generate_series(1, 12) u, generate_series(1, 4) k;
INSERT INTO a.plays VALUES (6, 'jazz-1', 'jazz', '2024-03-02');
SELECT audience.create_catalog('music') IS NOT NULL AS ok;
SELECT audience.add_event('music', 'a.plays', 'song', event_time => 'played_at') IS NOT NULL AS ok;
SELECT audience.map_property('music', 'genre', column_name => 'genre');
SELECT users, items FROM audience.build('music', factors => 2, neighbours => 3);

-- Save the top 25% for jazz: members are materialised.
SELECT * FROM audience.save_audience('jazz fans', 'genre', 'jazz', 25);
SELECT user_id, rank FROM audience.audience_members m JOIN audience.saved_audiences s USING (audience_id)
 WHERE s.name = 'jazz fans' ORDER BY rank;

-- New plays change the ranking; a refresh records who entered and who left.
INSERT INTO a.plays SELECT 1, 'jazz-' || k, 'jazz', '2024-03-03'::timestamptz + k * interval '1 minute' FROM generate_series(0, 4) k, generate_series(1, 6);
SELECT users FROM audience.build('music');
SELECT * FROM audience.refresh_audience('jazz fans');
SELECT user_id, change FROM audience.audience_changes c JOIN audience.saved_audiences s USING (audience_id)
 WHERE s.name = 'jazz fans' ORDER BY c.refreshed_at, c.change, c.user_id;
-- The one call a pg_cron job runs (see README): rebuild, then refresh every saved audience.
SELECT audience, members FROM audience.refresh_all_audiences();

\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT * FROM audience.save_audience('jazz fans', 'genre', 'jazz', 25);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.save_audience('bad', 'genre', 'jazz', 250);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS nothing_saved FROM audience.saved_audiences WHERE name = 'bad';
SELECT * FROM audience.refresh_audience('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.save_audience('jazz fans', 'genre', 'rock', 25, replace => true);

-- Right to be forgotten: one call removes user 1's events, memberships and history and rebuilds.
SELECT * FROM audience.forget_user('1');
SELECT count(*) AS plays_left FROM a.plays WHERE user_id = 1;
SELECT count(*) AS memberships_left FROM audience.audience_members WHERE user_id = '1';
SELECT count(*) AS history_left FROM audience.audience_changes WHERE user_id = '1';
SELECT * FROM audience.explain('music', '1', 'genre', 'jazz');
\echo :LAST_ERROR_SQLSTATE

SELECT audience.drop_audience('jazz fans');
SELECT audience.drop_catalog('music');
DROP SCHEMA a CASCADE;
