/**
 * The dashboard's files (this folder and vendor/, uPlot from npm:uplot), read once on first use
 * and kept in memory; read lazily so that importing the app needs no read permission.
 */
import type { StaticFile } from "../http/static_files.ts";
import { createFileReader } from "../http/static_files.ts";

/** The files of the dashboard, by path under `/dashboard/` (`index.html` is `/dashboard`). */
export const dashboardAssetNames = [
  "index.html",
  "dashboard.js",
  "dashboard.css",
  "vendor/uPlot.iife.min.js",
  "vendor/uPlot.min.css",
] as const;

/** A dashboard file's name. */
export type DashboardAssetName = (typeof dashboardAssetNames)[number];

/** Reads a dashboard file. */
export const dashboardAsset: (name: DashboardAssetName) => Promise<StaticFile> = createFileReader(
  new URL("./", import.meta.url),
);
