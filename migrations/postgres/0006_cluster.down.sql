DROP TABLE nodes;
DROP TABLE cluster;
