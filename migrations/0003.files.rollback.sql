-- Reverts 0003.files: drops the files table (the stored objects stay; sweep removes them).
DROP TABLE IF EXISTS files;
