-- certstudy's role and databases on a PostgreSQL server (idempotent: safe to run again).
-- Run by a superuser with the password given as the psql variable `pw` on standard input, never on
-- a command line: see head_postgres.sh. MLflow's tracking store goes in `mlflow`, Optuna's in `optuna`.
\set ON_ERROR_STOP on
SELECT 'CREATE ROLE certstudy LOGIN' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'certstudy')\gexec
ALTER ROLE certstudy PASSWORD :'pw';
SELECT 'CREATE DATABASE mlflow OWNER certstudy' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'mlflow')\gexec
SELECT 'CREATE DATABASE optuna OWNER certstudy' WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'optuna')\gexec
