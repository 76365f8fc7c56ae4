// The parts of lightweight-charts (npm, Apache-2.0, by TradingView) the ticker page uses,
// bundled by `npm run build` into static/dist/chart.js as the global LightweightCharts.
export { createChart, CandlestickSeries, HistogramSeries } from "lightweight-charts";
