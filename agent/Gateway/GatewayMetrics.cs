using Prometheus;

namespace Weft.Gateway;

/// <summary>
/// The gateway's Prometheus metrics in a registry of its own, served on <c>weft gateway --admin</c>. Request
/// metrics carry Istio's names and labels (reporter "source", as Istio's ingress gateway reports); label values
/// come from the route table (Services) and status codes, never from what a client sends, so series stay bounded.
/// </summary>
internal sealed class GatewayMetrics
{
    private static readonly string[] RequestLabels =
    [
        "reporter", "source_workload", "source_workload_namespace",
        "destination_service", "destination_service_name", "destination_service_namespace",
        "request_protocol", "response_code", "response_flags",
    ];

    private readonly Counter _requests;
    private readonly Histogram _duration;
    private readonly Counter _ejections;
    private readonly Counter _tlsRefused;
    private readonly Gauge _configStale;
    private readonly Gauge _routes;
    private readonly Gauge _connections;
    private readonly Counter _connectionsRefused;
    private readonly Counter _requestsRefused;
    private readonly Counter _clientsCut;
    private readonly Counter _accessLogDropped;
    private readonly Counter _spansExported;
    private readonly Counter _spansDropped;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<SeriesKey, RequestSeries> _series = new();

    public GatewayMetrics(string workloadNamespace = "")
    {
        WorkloadNamespace = workloadNamespace;
        Registry = Metrics.NewCustomRegistry();
        var factory = Metrics.WithCustomRegistry(Registry);
        _requests = factory.CreateCounter("istio_requests_total", "Requests the gateway answered, by destination and response code.", RequestLabels);
        _duration = factory.CreateHistogram("istio_request_duration_milliseconds", "Time from request to response headers at the gateway.", new HistogramConfiguration
        {
            LabelNames = RequestLabels,
            Buckets = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000],
        });
        _ejections = factory.CreateCounter("weft_gateway_endpoint_ejections_total", "Endpoints taken out of rotation for a while (passive health), by reason: connect_failure or 5xx.", "reason");
        _accessLogDropped = factory.CreateCounter("weft_gateway_access_log_dropped_total", "Access log lines lost because the output could not keep up (the queue was full) or failed.");
        _spansExported = factory.CreateCounter("weft_gateway_spans_exported_total", "Request spans the OTLP collector accepted (--otlp-endpoint).");
        _spansDropped = factory.CreateCounter("weft_gateway_spans_dropped_total", "Request spans lost, by reason: queue_full (the collector could not keep up; never waited for) or export_failed.", "reason");
        _tlsRefused = factory.CreateCounter("weft_gateway_tls_handshakes_refused_total", "TLS handshakes refused because no certificate serves the name the client asked for.");
        _configStale = factory.CreateGauge("weft_gateway_config_stale", "1 while the inventory file as it is now cannot be loaded (the last good routes are served).");
        _connections = factory.CreateGauge("weft_gateway_client_connections", "Client connections the gateway holds now.");
        _connectionsRefused = factory.CreateCounter("weft_gateway_client_connections_refused_total", "Client connections closed on accept because the gateway held its maximum (--max-connections).");
        _requestsRefused = factory.CreateCounter("weft_gateway_requests_refused_total", "Requests answered 503 (UO) because the gateway was forwarding its maximum at once (--max-requests).");
        _clientsCut = factory.CreateCounter("weft_gateway_client_disconnects_total",
            "Client connections (for response_stalled over HTTP/2: streams) the gateway cut on a limit, by reason: response_stalled (a response write the client did not take within the send timeout), or Kestrel's reason (min_response_data_rate, min_request_body_data_rate, request_headers_timeout, keep_alive_timeout, ...).", "reason");
        _routes = factory.CreateGauge("weft_gateway_routes", "Routes the gateway serves now, by listener.", "listener");
    }

    public CollectorRegistry Registry { get; }

    public string WorkloadNamespace { get; }

    public void Request(Backend? backend, string protocol, int statusCode, string responseFlags, double milliseconds)
    {
        // A request finds its two series by one dictionary lookup on values it already holds; prometheus-net's
        // WithLabels would build and hash a nine-value label set twice per request.
        var key = new SeriesKey(backend?.ServiceHost ?? "unknown", backend?.ServiceName ?? "unknown", backend?.ServiceNamespace ?? "unknown",
            protocol, statusCode, responseFlags);
        if (!_series.TryGetValue(key, out var series))
        {
            series = _series.GetOrAdd(key, NewSeries);
        }

        series.Requests.Inc();
        series.Duration.Observe(milliseconds);
    }

    private RequestSeries NewSeries(SeriesKey key)
    {
        string[] labels =
        [
            "source", "weft-gateway", WorkloadNamespace,
            key.ServiceHost, key.ServiceName, key.ServiceNamespace,
            key.Protocol, key.StatusCode.ToString(System.Globalization.CultureInfo.InvariantCulture), key.ResponseFlags,
        ];
        return new RequestSeries(_requests.WithLabels(labels), _duration.WithLabels(labels));
    }

    // The values of a request's series that vary: all come from the route table, the protocol and the status code,
    // so there are as many keys as series (which prometheus-net keeps for the process's life anyway).
    private readonly record struct SeriesKey(string ServiceHost, string ServiceName, string ServiceNamespace, string Protocol, int StatusCode, string ResponseFlags);

    private sealed record RequestSeries(Counter.Child Requests, Histogram.Child Duration);

    /// <param name="reason">"connect_failure" or "5xx".</param>
    public void Ejected(string reason) => _ejections.WithLabels(reason).Inc();

    public void AccessLogDropped() => _accessLogDropped.Inc();

    public void SpansExported(int count) => _spansExported.Inc(count);

    public void SpansDropped(string reason, int count) => _spansDropped.WithLabels(reason).Inc(count);

    public double SpansDroppedCount(string reason) => _spansDropped.WithLabels(reason).Value;

    public double SpansExportedCount => _spansExported.Value;

    public double EjectionCountFor(string reason) => _ejections.WithLabels(reason).Value;

    public void ConnectionOpened() => _connections.Inc();

    public void ConnectionClosed() => _connections.Dec();

    public void ConnectionRefused() => _connectionsRefused.Inc();

    public void RequestRefused() => _requestsRefused.Inc();

    public double ConnectionsRefusedCount => _connectionsRefused.Value;

    public double ConnectionsOpen => _connections.Value;

    /// <param name="reason">"response_stalled", or the error.type Kestrel gave a connection it ended.</param>
    public void ClientCut(string reason) => _clientsCut.WithLabels(reason).Inc();

    public double ClientCutCount(string reason) => _clientsCut.WithLabels(reason).Value;

    public void TlsRefused() => _tlsRefused.Inc();

    public void ConfigStale(bool stale) => _configStale.Set(stale ? 1 : 0);

    public void RoutesServed(RouteTable table)
    {
        _routes.WithLabels("http").Set(table.Http.Hosts.Sum(h => h.Routes.Length));
        _routes.WithLabels("https").Set(table.Https.Hosts.Sum(h => h.Routes.Length));
    }

    public double TlsRefusedCount => _tlsRefused.Value;

    public double EjectionCount => EjectionCountFor("connect_failure") + EjectionCountFor("5xx");

    /// <summary>Reports the gateway's HBONE tunnels (open, evicted at the limit, refused at the limit) at every scrape.</summary>
    public void Mesh(GatewayMesh mesh)
    {
        var factory = Metrics.WithCustomRegistry(Registry);
        var open = factory.CreateGauge("weft_gateway_tunnels", "HBONE tunnels to meshed backends the gateway holds now.");
        var evicted = factory.CreateCounter("weft_gateway_tunnels_evicted_total", "Idle tunnels closed to make room for a new one at --max-tunnels.");
        var refused = factory.CreateCounter("weft_gateway_tunnels_refused_total", "Requests answered 503 (UO) because the gateway held --max-tunnels tunnels and none was idle.");
        Registry.AddBeforeCollectCallback(() =>
        {
            open.Set(mesh.OpenTunnels);
            evicted.IncTo(mesh.TunnelsEvicted);
            refused.IncTo(mesh.TunnelsRefused);
        });
    }

    public async Task<string> ExportAsync()
    {
        using var stream = new MemoryStream();
        await Registry.CollectAndExportAsTextAsync(stream).ConfigureAwait(false);
        return System.Text.Encoding.UTF8.GetString(stream.ToArray());
    }
}
