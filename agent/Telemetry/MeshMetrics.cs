using Prometheus;
using Weft.Inventory;

namespace Weft.Telemetry;

/// <summary>Told when a flow enters and leaves the flow table.</summary>
internal interface IFlowObserver
{
    void Opened(Flow flow);

    void Closed(Flow flow);
}

/// <summary>What the agent's health gauges show, read once per scrape.</summary>
internal sealed record AgentHealth
{
    public int EnrolledPods { get; init; }

    public bool CaptureAttached { get; init; }

    /// <summary>Programs, maps and links pinned under the agent's bpffs directory.</summary>
    public int PinnedObjects { get; init; }

    public IReadOnlyList<(string Principal, DateTimeOffset NotAfter)> Certificates { get; init; } = [];

    /// <summary>CreateCertificate calls to the CA service: answered with a usable certificate, failed; and held certificates renewed.</summary>
    public (long Ok, long Failed, long Renewals) CaService { get; init; }

    /// <summary>Held certificates that do not chain to the CA's published signing root (a root rotation still under way here).</summary>
    public int CertificatesFromOtherRoots { get; init; }

    /// <summary>The process's open-file limit after the agent raised it.</summary>
    public long DescriptorLimit { get; init; }

    /// <summary>What inbound traffic holds now, by the limit it counts against (source_address, peer_identity, node).</summary>
    public IReadOnlyList<(string Limit, int Open, int Maximum)> Inbound { get; init; } = [];

    /// <summary>Outbound HBONE tunnels the pool holds open now.</summary>
    public int TunnelsOpen { get; init; }

    /// <summary>Outbound HBONE tunnels closed because they were idle or their pod left.</summary>
    public long TunnelsIdleClosed { get; init; }

    /// <summary>Idle outbound tunnels closed to keep their pod within --max-tunnels-per-pod.</summary>
    public long TunnelsEvicted { get; init; }

    /// <summary>Outbound connections refused because their pod held its limit of tunnels, none idle.</summary>
    public long TunnelsRefused { get; init; }

    /// <summary>Outbound tunnel streams whose CONNECT request carried the client's first bytes.</summary>
    public long FirstBytesCarried { get; init; }

    /// <summary>New outbound tunnel streams whose client's first bytes waited for the answer: every buffer for them was held.</summary>
    public long FirstBytesBudgetSpent { get; init; }

    /// <summary>TCP sockets made ahead in pods' namespaces, not yet used.</summary>
    public int SocketsReserved { get; init; }

    /// <summary>Bytes plaintext relays moved with splice(2), and their bursts that found no pipe and copied instead.</summary>
    public (long Bytes, long Unavailable) Spliced { get; init; }
}

/// <summary>
/// The node's Prometheus metrics, with Istio's names and labels so existing dashboards work.
/// <code>
///   relay ──Interlocked.Add──► Flow.BytesSent/Received        (data path: nothing else per read)
///   scrape ──before-collect──► for each live flow: counter += bytes now − bytes already reported
///   close  ──────────────────► the last delta, closed counter, duration/connect/TLS/RTT histograms
/// </code>
/// A long transfer shows in the next scrape, and the data path pays nothing for it. Labels hold
/// workload names, namespaces, principals and flags, never addresses or ports: series are bounded by
/// workload pairs times flags. Workloads come and go (bare pods, a Job per CronJob run), so the series of
/// a workload that left the inventory are removed once no open connection counts into them and
/// <see cref="DepartedSeriesRetention"/> passed since their last count; else they would pile up forever.
/// </summary>
internal sealed class MeshMetrics : IFlowObserver
{
    /// <summary>Istio's standard TCP labels, in the order values are given.</summary>
    internal static readonly string[] IstioLabels =
    [
        "reporter",
        "source_workload", "source_workload_namespace", "source_principal", "source_app", "source_canonical_service",
        "destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_canonical_service",
        "destination_service", "destination_service_name", "destination_service_namespace",
        "request_protocol", "response_flags", "connection_security_policy",
    ];

    private readonly FlowTable _flows;
    private readonly Func<InventorySnapshot?> _inventory;
    private readonly Dictionary<string, Series> _series = new(StringComparer.Ordinal);
    private readonly Lock _seriesGate = new();
    private readonly Counter _opened;
    private readonly Counter _closed;
    private readonly Counter _sentBytes;
    private readonly Counter _receivedBytes;
    private readonly Histogram _duration;
    private readonly Histogram _connect;
    private readonly Histogram _tlsHandshake;
    private readonly Histogram _tcpRtt;
    private readonly Gauge _live;
    private readonly Gauge _enrolled;
    private readonly Gauge _inventoryVersion;
    private readonly Gauge _inventoryLoaded;
    private readonly Gauge _inventoryAge;
    private readonly Gauge _certificateExpiry;
    private readonly Gauge _captureUp;
    private readonly Gauge _pinned;
    private readonly Counter _enrollFailures;
    private readonly Counter _refusedStreams;
    private readonly Counter _handedWrites;
    private readonly Counter _joinedFrames;
    private readonly Counter _inboundRefused;
    private readonly Gauge _inboundOpen;
    private readonly Gauge _inboundLimit;
    private readonly Gauge _descriptorLimit;
    private readonly Gauge _tunnelsOpen;
    private readonly Counter _accessLogDropped;
    private readonly Counter _tunnelsIdleClosed;
    private readonly Counter _tunnelsEvicted;
    private readonly Counter _tunnelsRefused;
    private readonly Counter _firstBytesCarried;
    private readonly Counter _firstBytesBudgetSpent;
    private readonly Counter _splicedBytes;
    private readonly Counter _spliceUnavailable;
    private readonly Gauge _socketsReserved;
    private readonly Counter _caRequests;
    private readonly Gauge _otherRoots;
    private readonly Counter _certificateRenewals;
    private readonly HashSet<string> _certificatePrincipals = new(StringComparer.Ordinal);
    private readonly TimeProvider _time;
    private WorkloadDirectory _directory = WorkloadDirectory.Empty;

    public MeshMetrics(FlowTable flows, Func<InventorySnapshot?> inventory, CollectorRegistry? registry = null, bool processMetrics = true, TimeProvider? time = null)
    {
        _flows = flows;
        _inventory = inventory;
        _time = time ?? TimeProvider.System;
        Registry = registry ?? Metrics.NewCustomRegistry();
        if (processMetrics)
        {
            DotNetStats.Register(Registry);
        }

        var f = Metrics.WithCustomRegistry(Registry);
        _opened = f.CreateCounter("istio_tcp_connections_opened_total", "TCP connections opened.", IstioLabels);
        _closed = f.CreateCounter("istio_tcp_connections_closed_total", "TCP connections closed.", IstioLabels);
        _sentBytes = f.CreateCounter("istio_tcp_sent_bytes_total", "Bytes sent towards the client (the response direction), counted while the connection is open.", IstioLabels);
        _receivedBytes = f.CreateCounter("istio_tcp_received_bytes_total", "Bytes received from the client (the request direction), counted while the connection is open.", IstioLabels);
        _duration = f.CreateHistogram("weft_tcp_connection_duration_seconds", "How long proxied connections lasted.",
            ["reporter", "response_flags"], new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.001, 4, 12) });
        _connect = f.CreateHistogram("weft_upstream_connect_seconds", "Time to connect upstream (to the app, or to open the tunnel stream).",
            ["reporter"], new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.0001, 2.5, 14) });
        _tlsHandshake = f.CreateHistogram("weft_tls_handshake_seconds", "mTLS handshake time of the tunnel a connection used.",
            ["reporter"], new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.0005, 2.5, 12) });
        _tcpRtt = f.CreateHistogram("weft_tcp_rtt_seconds", "The kernel's smoothed TCP round-trip time (TCP_INFO) of a proxied connection when it closed.",
            ["reporter"], new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.00001, 2.5, 14) });
        _live = f.CreateGauge("weft_tcp_connections_open", "Connections open now.", ["reporter"]);
        _enrolled = f.CreateGauge("weft_enrolled_pods", "Pods on this node whose traffic the agent captures.");
        _inventoryVersion = f.CreateGauge("weft_inventory_version", "Version of the inventory snapshot in force.");
        _inventoryLoaded = f.CreateGauge("weft_inventory_last_sync_timestamp_seconds", "When the inventory in force was loaded (Unix time).");
        _inventoryAge = f.CreateGauge("weft_inventory_sync_age_seconds", "Seconds since the inventory in force was loaded.");
        _certificateExpiry = f.CreateGauge("weft_certificate_expiry_timestamp_seconds", "When each workload certificate held by the agent expires (Unix time).", ["principal"]);
        _captureUp = f.CreateGauge("weft_bpf_capture_up", "1 when the eBPF capture programs are loaded and attached.");
        _pinned = f.CreateGauge("weft_bpf_pinned_objects", "eBPF programs, maps and links pinned under the agent's bpffs directory.");
        _enrollFailures = f.CreateCounter("weft_pod_enroll_failures_total", "Pods the agent failed to enroll (capture attach, listeners).");
        _refusedStreams = f.CreateCounter("weft_hbone_streams_refused_total",
            "Inbound HBONE CONNECT streams refused with REFUSED_STREAM: their connection was at its concurrent-stream limit.");
        _handedWrites = f.CreateCounter("weft_hbone_writes_handed_total",
            "DATA writes that found their tunnel's write lock taken and were handed to the writer holding it instead of waiting.");
        _joinedFrames = f.CreateCounter("weft_hbone_data_frames_joined_total",
            "Inbound DATA frames read together with the stream's frame before them and handed to its socket with it in one send.");
        _inboundRefused = f.CreateCounter("weft_inbound_refused_total", "Inbound connections and CONNECT streams refused by a limit.", ["reason"]);
        foreach (var reason in InboundRefusalReasons)
        {
            _inboundRefused.WithLabels(reason);
        }

        _inboundOpen = f.CreateGauge("weft_inbound_open", "Inbound connections (source_address: accepted; peer_identity: CONNECT streams; node: both) held now.", ["limit"]);
        _inboundLimit = f.CreateGauge("weft_inbound_limit", "The inbound limits in force: per source address, per peer identity, per node.", ["limit"]);
        _tunnelsOpen = f.CreateGauge("weft_hbone_tunnels_open", "Outbound HBONE tunnels (mTLS connections to other nodes' pods) open now.");
        _tunnelsIdleClosed = f.CreateCounter("weft_hbone_tunnels_idle_closed_total", "Outbound HBONE tunnels closed because they carried nothing for the idle timeout or their pod left.");
        _tunnelsEvicted = f.CreateCounter("weft_hbone_tunnels_evicted_total", "Idle outbound HBONE tunnels closed to make room for a new one of the same pod (--max-tunnels-per-pod).");
        _tunnelsRefused = f.CreateCounter("weft_hbone_tunnels_refused_total", "Outbound connections refused (UO) because their pod held --max-tunnels-per-pod tunnels and none was idle.");
        _firstBytesCarried = f.CreateCounter("weft_hbone_streams_first_bytes_total", "Outbound HBONE streams whose CONNECT request carried the client's first bytes (what it had sent when the stream opened, up to 4 KiB), so its first round trip crossed the tunnel once.");
        _firstBytesBudgetSpent = f.CreateCounter("weft_hbone_first_bytes_budget_spent_total", "New outbound HBONE streams whose client's first bytes waited for the stream's answer because 1,024 connections already held theirs.");
        _socketsReserved = f.CreateGauge("weft_pod_sockets_reserved", "TCP sockets made ahead in pods' network namespaces for busy pods' next connections, not yet used (at most 16 per pod and address family; closed after 2 s unused).");
        _accessLogDropped = f.CreateCounter("weft_access_log_dropped_total", "Access-log lines dropped because the log's reader fell 16,384 lines behind.");
        _caRequests = f.CreateCounter("weft_ca_requests_total", "Certificate requests this agent made to the CA service, by result (ok, failed).", ["result"]);
        _otherRoots = f.CreateGauge("weft_certificates_from_other_roots",
            "Held workload certificates that do not chain to the CA's published signing root: renewals a root rotation still waits for on this node.");
        _certificateRenewals = f.CreateCounter("weft_certificate_renewals_total", "Held workload certificates replaced by a renewed one from the CA service.");
        _splicedBytes = f.CreateCounter("weft_relay_spliced_bytes_total",
            "Bytes plaintext relays moved from socket to socket with splice(2), through a kernel pipe, never copied into the agent.");
        _spliceUnavailable = f.CreateCounter("weft_relay_splice_unavailable_total",
            "Plaintext relay bursts that copied through a buffer because no pipe could be made (the agent was short of descriptors).");
        _descriptorLimit = f.CreateGauge("weft_descriptor_limit", "The agent's open-file limit (RLIMIT_NOFILE) after raising it to the hard limit.");
        Registry.AddBeforeCollectCallback(Collect);
        flows.Observer = this;
    }

    public CollectorRegistry Registry { get; }

    /// <summary>Read before every scrape for the health gauges; null leaves them at zero.</summary>
    public Func<AgentHealth>? Health { get; set; }

    /// <summary>
    /// How long the series of a departed workload stay after their last count: several scrape intervals, so
    /// every scraper sees their final values before they go.
    /// </summary>
    public static readonly TimeSpan DepartedSeriesRetention = TimeSpan.FromMinutes(5);

    /// <summary>The <c>reason</c> labels of <c>weft_inbound_refused_total</c>, present from the start at zero.</summary>
    public static readonly string[] InboundRefusalReasons = ["source_address", "peer_identity", "node", "pod"];

    public void EnrollFailed() => _enrollFailures.Inc();

    public void InboundRefused(string reason) => _inboundRefused.WithLabels(reason).Inc();

    public void Opened(Flow flow)
    {
        // Counted at the first scrape or at close, when the proxy has filled in principals and flags.
    }

    public void Closed(Flow flow)
    {
        var meter = flow.Meter;
        lock (meter)
        {
            if (meter.Closed)
            {
                return;
            }

            var series = Flush(flow, meter);
            meter.Closed = true;
            series.Closed.Inc();
            var reporter = Reporter(flow);
            if (flow.End is { } end)
            {
                _duration.WithLabels(reporter, flow.ResponseFlags).Observe((end - flow.Start).TotalSeconds);
            }

            if (flow.ConnectTime is { } connect)
            {
                _connect.WithLabels(reporter).Observe(connect.TotalSeconds);
            }

            if (flow.TlsHandshakeTime is { } tls)
            {
                _tlsHandshake.WithLabels(reporter).Observe(tls.TotalSeconds);
            }

            if (flow.TcpRtt is { } rtt)
            {
                _tcpRtt.WithLabels(reporter).Observe(rtt.TotalSeconds);
            }
        }

        // A scrape that took the meter before this still finds it closed.
        flow.MeterFinished();
    }

    /// <summary>Renders the exposition text, as a scrape would get it.</summary>
    public async Task<string> RenderAsync()
    {
        using var buffer = new MemoryStream();
        await Registry.CollectAndExportAsTextAsync(buffer).ConfigureAwait(false);
        return System.Text.Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length);
    }

    /// <summary>Series of the istio_tcp_* counters that exist now.</summary>
    internal int SeriesCount
    {
        get
        {
            lock (_seriesGate)
            {
                return _series.Count;
            }
        }
    }

    private void Collect()
    {
        _refusedStreams.IncTo(Weft.Hbone.HboneCounters.Process.RefusedStreams);
        _handedWrites.IncTo(Weft.Hbone.HboneCounters.Process.HandedWrites);
        _joinedFrames.IncTo(Weft.Hbone.HboneCounters.Process.JoinedFrames);
        _accessLogDropped.IncTo(_flows.AccessLogDropped);
        int outbound = 0, inbound = 0;
        var inUse = new HashSet<Series>(ReferenceEqualityComparer.Instance);
        foreach (var flow in _flows.LiveFlows)
        {
            var meter = flow.Meter;
            lock (meter)
            {
                if (!meter.Closed)
                {
                    inUse.Add(Flush(flow, meter));
                }
            }

            if (flow.Direction == FlowDirection.Outbound)
            {
                outbound++;
            }
            else
            {
                inbound++;
            }
        }

        _live.WithLabels("source").Set(outbound);
        _live.WithLabels("destination").Set(inbound);
        RemoveDepartedSeries(inUse);

        var snapshot = _inventory();
        if (snapshot is not null && snapshot.Version > 0)
        {
            _inventoryVersion.Set(snapshot.Version);
            _inventoryLoaded.Set(snapshot.LoadedAt.ToUnixTimeMilliseconds() / 1000.0);
            _inventoryAge.Set(Math.Max(0, (DateTimeOffset.UtcNow - snapshot.LoadedAt).TotalSeconds));
        }

        if (Health?.Invoke() is { } health)
        {
            _enrolled.Set(health.EnrolledPods);
            _captureUp.Set(health.CaptureAttached ? 1 : 0);
            _pinned.Set(health.PinnedObjects);
            _descriptorLimit.Set(health.DescriptorLimit);
            _tunnelsOpen.Set(health.TunnelsOpen);
            _tunnelsIdleClosed.IncTo(health.TunnelsIdleClosed);
            _tunnelsEvicted.IncTo(health.TunnelsEvicted);
            _tunnelsRefused.IncTo(health.TunnelsRefused);
            _firstBytesCarried.IncTo(health.FirstBytesCarried);
            _firstBytesBudgetSpent.IncTo(health.FirstBytesBudgetSpent);
            _splicedBytes.IncTo(health.Spliced.Bytes);
            _spliceUnavailable.IncTo(health.Spliced.Unavailable);
            _socketsReserved.Set(health.SocketsReserved);
            _caRequests.WithLabels("ok").IncTo(health.CaService.Ok);
            _caRequests.WithLabels("failed").IncTo(health.CaService.Failed);
            _certificateRenewals.IncTo(health.CaService.Renewals);
            _otherRoots.Set(health.CertificatesFromOtherRoots);
            foreach (var (limit, open, maximum) in health.Inbound)
            {
                _inboundOpen.WithLabels(limit).Set(open);
                _inboundLimit.WithLabels(limit).Set(maximum);
            }

            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var (principal, notAfter) in health.Certificates)
            {
                seen.Add(principal);
                _certificateExpiry.WithLabels(principal).Set(notAfter.ToUnixTimeSeconds());
            }

            lock (_certificatePrincipals)
            {
                foreach (var gone in _certificatePrincipals.Where(p => !seen.Contains(p)).ToList())
                {
                    _certificateExpiry.RemoveLabelled(gone);
                    _certificatePrincipals.Remove(gone);
                }

                _certificatePrincipals.UnionWith(seen);
            }
        }
    }

    /// <summary>
    /// Removes the series whose source or destination workload is no longer in the inventory, that no open
    /// connection counts into, and that were last counted <see cref="DepartedSeriesRetention"/> ago or more.
    /// A connection closing in this very moment, after holding such a series idle for the whole retention
    /// with no scrape in between, may lose its last delta; nothing else can.
    /// </summary>
    private void RemoveDepartedSeries(HashSet<Series> inUse)
    {
        var directory = Directory();
        if (directory.Version < 0)
        {
            return;
        }

        var before = _time.GetUtcNow().UtcTicks - DepartedSeriesRetention.Ticks;
        lock (_seriesGate)
        {
            List<string>? departed = null;
            foreach (var (key, series) in _series)
            {
                if (Volatile.Read(ref series.LastCountedTicks) <= before && !inUse.Contains(series)
                    && (!directory.Has(series.Values[SourceWorkloadLabel], series.Values[SourceNamespaceLabel])
                        || !directory.Has(series.Values[DestinationWorkloadLabel], series.Values[DestinationNamespaceLabel])))
                {
                    (departed ??= []).Add(key);
                }
            }

            foreach (var key in departed ?? [])
            {
                _series.Remove(key, out var series);
                _opened.RemoveLabelled(series!.Values);
                _closed.RemoveLabelled(series.Values);
                _sentBytes.RemoveLabelled(series.Values);
                _receivedBytes.RemoveLabelled(series.Values);
            }
        }
    }

    private const int SourceWorkloadLabel = 1, SourceNamespaceLabel = 2, DestinationWorkloadLabel = 6, DestinationNamespaceLabel = 7;

    /// <summary>Adds what the flow moved since the last flush to its series; the caller holds the meter's lock.</summary>
    private Series Flush(Flow flow, FlowMeter meter)
    {
        var series = SeriesFor(flow, meter);
        Volatile.Write(ref series.LastCountedTicks, _time.GetUtcNow().UtcTicks);
        if (!meter.OpenCounted)
        {
            series.Opened.Inc();
            meter.OpenCounted = true;
        }

        // Istio's names are from the server's side: received is the request direction, sent the response.
        var sent = flow.BytesSent;
        var received = flow.BytesReceived;
        if (sent > meter.ReportedSent)
        {
            series.Received.Inc(sent - meter.ReportedSent);
            meter.ReportedSent = sent;
        }

        if (received > meter.ReportedReceived)
        {
            series.Sent.Inc(received - meter.ReportedReceived);
            meter.ReportedReceived = received;
        }

        return series;
    }

    /// <summary>The series for the flow's labels now; looked up again only when a label input changed.</summary>
    private Series SeriesFor(Flow flow, FlowMeter meter)
    {
        var directory = Directory();
        if (meter.Series is { } cached && meter.SameInputs(flow, directory.Version))
        {
            return cached;
        }

        var values = LabelValues(flow, directory);
        var key = string.Join('\u0001', values);
        Series? series;
        lock (_seriesGate)
        {
            if (!_series.TryGetValue(key, out series))
            {
                series = new Series(values, _opened.WithLabels(values), _closed.WithLabels(values), _sentBytes.WithLabels(values), _receivedBytes.WithLabels(values));
                _series[key] = series;
            }

            // Marked under the gate, so a removal running now cannot take a series this flow is about to count into.
            series.LastCountedTicks = _time.GetUtcNow().UtcTicks;
        }

        meter.Remember(flow, directory.Version, series);
        return series;
    }

    private WorkloadDirectory Directory()
    {
        var directory = Volatile.Read(ref _directory);
        var snapshot = _inventory();
        if (snapshot is not null && snapshot.Version != directory.Version)
        {
            directory = WorkloadDirectory.Build(snapshot);
            Volatile.Write(ref _directory, directory);
        }

        return directory;
    }

    internal static string[] LabelValues(Flow flow, WorkloadDirectory directory)
    {
        var source = directory.Resolve(flow.SourceWorkload);
        var destination = directory.Resolve(flow.DestinationWorkload);
        string service = "unknown", serviceName = "unknown", serviceNamespace = "unknown";
        if (flow.DestinationService is { } key && key.IndexOf('/') is var slash and > 0)
        {
            serviceNamespace = key[..slash];
            serviceName = key[(slash + 1)..];
            service = $"{serviceName}.{serviceNamespace}.svc.cluster.local";
        }

        return
        [
            Reporter(flow),
            source.Workload, source.Namespace, flow.SourcePrincipal ?? "unknown", source.App, source.CanonicalService,
            destination.Workload, destination.Namespace, flow.DestinationPrincipal ?? "unknown", destination.App, destination.CanonicalService,
            service, serviceName, serviceNamespace,
            "tcp", flow.ResponseFlags, flow.SecurityPolicy,
        ];
    }

    private static string Reporter(Flow flow) => flow.Direction == FlowDirection.Outbound ? "source" : "destination";

    internal sealed class Series(string[] values, Counter.Child opened, Counter.Child closed, Counter.Child sent, Counter.Child received)
    {
        public string[] Values { get; } = values;

        public Counter.Child Opened { get; } = opened;

        public Counter.Child Closed { get; } = closed;

        public Counter.Child Sent { get; } = sent;

        public Counter.Child Received { get; } = received;

        /// <summary>UTC ticks of the last count into the series; read and written with Volatile.</summary>
        public long LastCountedTicks;
    }

    /// <summary>What the metrics already took from one flow; lives on the flow, guarded by its own lock.</summary>
    internal sealed class FlowMeter
    {
        /// <summary>The meter of every flow whose close was counted: closed, counting nothing more.</summary>
        public static readonly FlowMeter Finished = new() { Closed = true };

        private Series? _series;
        private string? _sourceWorkload, _destinationWorkload, _service, _sourcePrincipal, _destinationPrincipal, _policy, _flags;
        private long _directoryVersion;

        public long ReportedSent;
        public long ReportedReceived;
        public bool OpenCounted;
        public bool Closed;

        internal Series? Series => _series;

        internal bool SameInputs(Flow f, long directoryVersion) =>
            directoryVersion == _directoryVersion
            && ReferenceEquals(f.SourceWorkload, _sourceWorkload) && ReferenceEquals(f.DestinationWorkload, _destinationWorkload)
            && ReferenceEquals(f.DestinationService, _service) && ReferenceEquals(f.SourcePrincipal, _sourcePrincipal)
            && ReferenceEquals(f.DestinationPrincipal, _destinationPrincipal) && ReferenceEquals(f.SecurityPolicy, _policy)
            && ReferenceEquals(f.ResponseFlags, _flags);

        internal void Remember(Flow f, long directoryVersion, Series series)
        {
            _series = series;
            _directoryVersion = directoryVersion;
            (_sourceWorkload, _destinationWorkload, _service) = (f.SourceWorkload, f.DestinationWorkload, f.DestinationService);
            (_sourcePrincipal, _destinationPrincipal, _policy, _flags) = (f.SourcePrincipal, f.DestinationPrincipal, f.SecurityPolicy, f.ResponseFlags);
        }
    }
}
