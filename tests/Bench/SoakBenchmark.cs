using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Weft.Cli;
using Weft.Harness;

namespace Weft.Bench;

/// <summary>
/// Issue 13's soak: a 2-node mTLS cluster with real agents carrying mixed traffic for N minutes while the
/// cluster changes under it, then the invariants: no corrupted byte, no failed connection but those the
/// policy denied at that moment, node1's agent flat in memory, descriptors and threads, nothing left behind.
/// <code>
///  node1 (agent kept all run, sampled every 5 s)          node2 (agent replaced every few minutes)
///   long1    ─ 4 MiB up, 64 KiB down, hashed both ways ──► srv1:8080 (hash)
///   rate1    ─ new connections, 2 at a time, 64 B echo  ──► srv1:9090 (echo)
///   rr1      ─ 2,000 x 1 KiB round trips per connection ──► srv1:9090
///   idle1    ─ 20 held idle connections, 15 s per batch ──► srv1:9090
///   probe1   ─ small requests, DENY policy flips on/off  ──► guard1:8080
///   churner1 ─ 5 connections to each new pod            ──► churn-K:8080 (added, then removed)
///  CA files rotated on disk (both roots trusted, sign with the new, retire the old): both agents reload.
/// </code>
/// The agents drain for 30 s on SIGTERM, longer than any connection here lasts, so a replaced agent's
/// connections all finish on it: a failure during a replacement is a failure.
/// </summary>
internal static class SoakBenchmark
{
    public const string Usage = """
        weft-bench --suite soak [--minutes N] [--json FILE]
          Soak with churn (issue 13): N minutes (default 30) of mixed mTLS traffic between two nodes (long
          hashed transfers, held idle connections, request/response, new connections at a steady rate)
          while pods are added and removed, a DENY policy flips, the CA rotates on disk and node2's agent
          is replaced every few minutes. Prints the invariants: corrupted bytes, failed connections other
          than those denied, node1 agent RSS, descriptors and threads with their slope per hour, and what
          was left behind (pins, namespaces, cgroups). Exit code 1 when an invariant does not hold.
        """;

    private const string Ns = "soak";
    private const int LongBytes = 4 * 1024 * 1024;
    private const int LongReply = 64 * 1024;
    private const int HeldPerBatch = 20;
    private static readonly TimeSpan HeldFor = TimeSpan.FromSeconds(15);
    private static readonly TimeSpan SampleEvery = TimeSpan.FromSeconds(5);
    private static readonly TimeSpan Bounded = TimeSpan.FromSeconds(60);

    // A flow denied this long after the policy was removed (or before it was written) still counts as denied by it:
    // both agents reload the inventory file within a second, this leaves a wide margin on a loaded machine.
    private static readonly TimeSpan PolicyLag = TimeSpan.FromSeconds(5);

    public static async Task<int> RunAsync(CommandLine cl)
    {
        var minutes = cl.Int("minutes", 30);
        var jsonPath = cl.Get("json");
        cl.Get("suite");
        cl.RejectUnknown();
        if (minutes < 1)
        {
            throw new UsageException("--minutes must be at least 1");
        }

        using var stop = new BenchInterrupt("stopping the soak early, checking what ran and cleaning up");
        NetnsCluster.CleanupStale();
        var report = await RunAsync(TimeSpan.FromMinutes(minutes), line => Console.WriteLine(line), stop.Token);
        Console.WriteLine();
        Console.WriteLine(report.Text());
        if (jsonPath is not null)
        {
            File.WriteAllText(jsonPath, report.ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }

        return report.Holds ? 0 : 1;
    }

    /// <summary>Runs the soak for <paramref name="duration"/> (less when cancelled) and returns what it found; the cluster is gone when it returns.</summary>
    public static async Task<SoakReport> RunAsync(TimeSpan duration, Action<string> say, CancellationToken cancellationToken)
    {
        var spec = new ClusterSpec(
            new NodeSpec("node1", Pods("long1", "rate1", "rr1", "idle1", "probe1", "churner1")),
            new NodeSpec("node2", Pods("srv1", "guard1")))
        {
            TeardownOnExit = false,
        };
        say($"== soak: {duration.TotalMinutes:0.#} min; building a 2-node mTLS cluster");
        var mesh = await MeshCluster.StartAsync(spec, c => c.InventoryYaml(), mtls: true, "--drain-seconds", "30");
        var run = new SoakRun(mesh, duration, say);
        try
        {
            await run.RunAsync(cancellationToken);
        }
        finally
        {
            var cluster = mesh.Cluster;
            try
            {
                await mesh.DisposeAsync();
            }
            catch (HarnessException e)
            {
                run.TeardownError = e.Message;
            }

            run.LeftBehind = LeftBehind(cluster);
        }

        return run.Report();
    }

    private static PodSpec[] Pods(params string[] names) => [.. names.Select(n => new PodSpec(Ns, n))];

    /// <summary>What of the run still exists after its teardown: eBPF pins, network namespaces, the cgroup tree.</summary>
    private static List<string> LeftBehind(NetnsCluster cluster)
    {
        var left = new List<string>();
        if (Directory.Exists(NetnsCluster.BpffsRoot))
        {
            left.AddRange(Directory.EnumerateDirectories(NetnsCluster.BpffsRoot, $"weft-{cluster.RunId}-*").Select(d => "pins " + d));
        }

        if (Directory.Exists(NetnsCluster.NetnsDirectory))
        {
            left.AddRange(Directory.EnumerateFiles(NetnsCluster.NetnsDirectory)
                .Where(f => Path.GetFileName(f).StartsWith(cluster.NetnsPrefix, StringComparison.Ordinal)).Select(f => "netns " + f));
        }

        if (Directory.Exists(cluster.CgroupRoot))
        {
            left.Add("cgroup " + cluster.CgroupRoot);
        }

        return left;
    }

    /// <summary>One soak: the workloads, the schedule of changes, and what they observed.</summary>
    private sealed class SoakRun(MeshCluster mesh, TimeSpan duration, Action<string> say)
    {
        private readonly Stopwatch _clock = new();
        private readonly List<(TimeSpan On, TimeSpan? Off)> _policyWindows = [];
        private readonly List<string> _removedPods = [];
        private readonly Dictionary<string, ManagedProcess> _churnServers = [];
        private readonly List<ManagedProcess> _replacedAgents = [];
        private readonly List<Sample> _samples = [];
        private readonly List<string> _failures = [];
        private readonly List<string> _events = [];
        private readonly object _gate = new();

        // A CA rotation waits for each agent to reload; an agent replaced meanwhile drains and exits instead
        // (and its successor read the files at start), so the two changes take turns.
        private readonly SemaphoreSlim _agentChange = new(1, 1);
        private long _corruptedTransfers;
        private long _corruptedBytes;
        private long _okConnections;
        private long _bytesHashed;
        private int _churned;
        private int _rotations;
        private int _replacements;
        private bool _policyOn;
        private DateTimeOffset _startedAt;

        public string? TeardownError { get; set; }

        public List<string> LeftBehind { get; set; } = [];

        private NetnsCluster Cluster => mesh.Cluster;

        private ClusterPod Pod(string name) => Cluster.Pod(Ns, name);

        public async Task RunAsync(CancellationToken cancellationToken)
        {
            var srv = Pod("srv1");
            var guard = Pod("guard1");
            var agent1 = mesh.Agent("node1");
            await using var hashServer = await ServeAsync(srv, "--port", "8080", "--reply-bytes", LongReply.ToString(CultureInfo.InvariantCulture));
            await using var echoServer = await ServeAsync(srv, "--port", "9090", "--mode", "echo");
            await using var guardServer = await ServeAsync(guard, "--port", "8080", "--reply-bytes", "7");

            _startedAt = DateTimeOffset.UtcNow;
            _clock.Start();
            using var end = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            end.CancelAfter(duration);

            // Endless clients, stopped at the end: their in-flight connections then end "Stopped".
            var endless = new List<(string Name, ManagedProcess Process)>
            {
                ("long transfers", Pod("long1").StartWeft("app", "send", "--to", $"{srv.Address}:8080", "--bytes", LongBytes.ToString(CultureInfo.InvariantCulture),
                    "--expect-reply-bytes", LongReply.ToString(CultureInfo.InvariantCulture), "--connections", "1000000000", "--concurrency", "1",
                    "--hold-ms", "500", "--timeout-ms", "60000")),
                ("new connections", Pod("rate1").StartWeft("app", "send", "--to", $"{srv.Address}:9090", "--bytes", "64", "--expect-reply-bytes", "64",
                    "--connections", "1000000000", "--concurrency", "2", "--hold-ms", "100", "--timeout-ms", "10000")),
                ("policy probe", Pod("probe1").StartWeft("app", "send", "--to", $"{guard.Address}:8080", "--bytes", "64", "--expect-reply-bytes", "7",
                    "--connections", "1000000000", "--concurrency", "1", "--hold-ms", "250", "--timeout-ms", "10000")),
            };

            var loops = new[]
            {
                Guarded("held connections", () => HeldLoopAsync(srv, end.Token), end),
                Guarded("request/response", () => RoundTripLoopAsync(srv, end.Token), end),
                Guarded("sampling", () => SampleLoopAsync(agent1, end.Token), end),
                Guarded("schedule", () => ScheduleAsync(end.Token), end),
            };
            await Task.WhenAll(loops);
            foreach (var (_, process) in endless)
            {
                process.Stop();
            }

            foreach (var (name, process) in endless)
            {
                try
                {
                    await process.WaitForExitAsync(TimeSpan.FromSeconds(30));
                }
                catch (TimeoutException)
                {
                    Fail($"{name}: the client did not finish within 30 s of SIGTERM (a connection hung?)");
                    process.Kill();
                }
            }

            say($"== {_clock.Elapsed.TotalMinutes:0.0} min done; checking");
            foreach (var (name, process) in endless)
            {
                CheckSends(name, process, denied: name == "policy probe");
            }

            CheckServer(hashServer);
            CheckDenials(agent1);
            foreach (var flow in MeshCluster.Flows(agent1).Where(f => f.GetProperty("response_flags").GetString() is not ("-" or ResponseDeny)))
            {
                var at = DateTimeOffset.Parse(flow.GetProperty("start").GetString()!, CultureInfo.InvariantCulture) - _startedAt;
                Event($"node1 flow at {at.TotalSeconds:0.0} s ended {flow.GetProperty("response_flags").GetString()}: {flow.GetProperty("error")}");
            }
        }

        /// <summary>Runs a loop of the soak; an exception in it is a failure of the run, and ends the run early (the other loops stop too).</summary>
        private Task Guarded(string name, Func<Task> loop, CancellationTokenSource end) => Task.Run(async () =>
        {
            try
            {
                await loop();
            }
            catch (OperationCanceledException) when (end.IsCancellationRequested)
            {
            }
            catch (Exception e)
            {
                Fail($"{name}: {e.GetType().Name}: {e.Message}");
                end.Cancel();
            }
        }, CancellationToken.None);

        private async Task<ManagedProcess> ServeAsync(ClusterPod pod, params string[] args)
        {
            return await MeshCluster.StartServerAsync(pod, args);
        }

        /// <summary>The changes, on a timetable scaled to the run: pod churn, policy flips, CA rotation, agent replacement.</summary>
        private async Task ScheduleAsync(CancellationToken cancellationToken)
        {
            var flipEvery = duration < TimeSpan.FromMinutes(8) ? TimeSpan.FromSeconds(15) : TimeSpan.FromSeconds(60);
            var replaceEvery = duration <= TimeSpan.FromMinutes(6) ? duration / 2 : TimeSpan.FromMinutes(3);
            List<TimeSpan> rotateAt = duration < TimeSpan.FromMinutes(10) ? [duration * 0.3]
                : [.. Enumerable.Range(0, (int)(duration / TimeSpan.FromMinutes(10))).Select(i => TimeSpan.FromMinutes(5 + (10 * i)))];
            await Task.WhenAll(
                Task.Run(() => EveryAsync(flipEvery, flipEvery, _ => { FlipPolicy(); return Task.CompletedTask; }, cancellationToken), CancellationToken.None),
                Task.Run(() => EveryAsync(TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(20), ChurnAsync, cancellationToken), CancellationToken.None),
                Task.Run(() => EveryAsync(replaceEvery, replaceEvery, async token =>
                {
                    if (duration - _clock.Elapsed > TimeSpan.FromSeconds(20))
                    {
                        await ReplaceAgentAsync(token);
                    }
                }, cancellationToken), CancellationToken.None),
                Task.Run(async () =>
                {
                    var ca = new CaRotation(mesh.Ca!);
                    foreach (var at in rotateAt)
                    {
                        await Task.Delay(at - _clock.Elapsed is var wait && wait > TimeSpan.Zero ? wait : TimeSpan.Zero, cancellationToken);
                        await RotateAsync(ca, cancellationToken);
                    }
                }, CancellationToken.None));
        }

        /// <summary>Runs <paramref name="change"/> first at <paramref name="first"/>, then <paramref name="every"/> after each one ended, until cancelled.</summary>
        private async Task EveryAsync(TimeSpan first, TimeSpan every, Func<CancellationToken, Task> change, CancellationToken cancellationToken)
        {
            try
            {
                await Task.Delay(first, cancellationToken);
                while (true)
                {
                    await change(cancellationToken);
                    await Task.Delay(every, cancellationToken);
                }
            }
            catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
            {
            }
        }

        private string Inventory()
        {
            var text = Cluster.InventoryYaml(new InventoryOptions { Omit = [.. Cluster.Pods.Where(p => _removedPods.Contains(p.Name))] });
            return !_policyOn ? text : text + """
                ---
                apiVersion: weft.dev/v1alpha1
                kind: AuthorizationPolicy
                metadata: {name: deny-probe, namespace: soak}
                spec:
                  selector: {matchLabels: {app: guard}}
                  action: DENY
                  rules:
                  - from: [{source: {principals: ["cluster.local/ns/soak/sa/probe"]}}]

                """;
        }

        private void FlipPolicy()
        {
            lock (_gate)
            {
                _policyOn = !_policyOn;
                if (_policyOn)
                {
                    _policyWindows.Add((_clock.Elapsed, null));
                }
                else
                {
                    _policyWindows[^1] = (_policyWindows[^1].On, _clock.Elapsed);
                }

                mesh.WriteInventory(Inventory());
            }

            Event($"policy deny-probe {(_policyOn ? "on" : "off")}");
        }

        /// <summary>A new pod on node2 with a server; once its agent enrolled it, 5 connections to it must work; the previous one leaves.</summary>
        private async Task ChurnAsync(CancellationToken cancellationToken)
        {
            var name = $"churn-{++_churned}";
            var pod = Cluster.AddPod(Cluster.Node("node2"), Ns, name);
            _churnServers[name] = await ServeAsync(pod, "--port", "8080", "--reply-bytes", "7");
            lock (_gate)
            {
                mesh.WriteInventory(Inventory());
            }

            // Whichever agent serves node2 now (a replacement may be under way) enrolls it.
            var deadline = _clock.Elapsed + Bounded;
            while (!mesh.Agent("node2").StderrLines.Any(l => l.Contains($"{Ns}/{name}: enrolled", StringComparison.Ordinal)))
            {
                if (_clock.Elapsed > deadline)
                {
                    throw new TimeoutException($"node2's agent did not enroll {name} within {Bounded.TotalSeconds:0} s:\n{mesh.Agent("node2").Stderr}");
                }

                await Task.Delay(100, cancellationToken);
            }

            var run = await MeshCluster.RunPeerAsync(Pod("churner1"), Bounded, "send", "--to", $"{pod.Address}:8080", "--bytes", "1000",
                "--expect-reply-bytes", "7", "--connections", "5", "--concurrency", "1", "--timeout-ms", "10000");
            Tally($"churn to {name}", run.Connections, denied: false);

            if (_churned > 1)
            {
                var previous = $"churn-{_churned - 1}";
                await _churnServers[previous].DisposeAsync();

                lock (_gate)
                {
                    _removedPods.Add(previous);
                    mesh.WriteInventory(Inventory());
                }
            }

            Event($"pod {name} added{(_churned > 1 ? $", churn-{_churned - 1} removed" : "")}");
            cancellationToken.ThrowIfCancellationRequested();
        }

        private async Task RotateAsync(CaRotation ca, CancellationToken cancellationToken)
        {
            await _agentChange.WaitAsync(cancellationToken);
            try
            {
                await RotateExclusiveAsync(ca, cancellationToken);
            }
            finally
            {
                _agentChange.Release();
            }
        }

        private async Task RotateExclusiveAsync(CaRotation ca, CancellationToken cancellationToken)
        {
            var n = ++_rotations;
            var agents = new[] { mesh.Agent("node1"), mesh.Agent("node2") };
            async Task StepAsync(string what, Action write)
            {
                var before = agents.Select(Reloads).ToArray();
                write();
                for (var i = 0; i < agents.Length; i++)
                {
                    var (agent, count) = (agents[i], before[i]);
                    await MeshCluster.WaitForStderrAsync(agent, _ => Reloads(agent) > count, Bounded);
                }

                Event($"CA rotation {n}: {what} (both agents reloaded)");
            }

            static int Reloads(ManagedProcess agent) => agent.StderrLines.Count(l => l.Contains("CA reloaded", StringComparison.Ordinal));
            await StepAsync("both roots trusted", ca.TrustBoth);
            await Task.Delay(TimeSpan.FromSeconds(5), cancellationToken);
            await StepAsync("signing with the new root", ca.SignWithNew);
            await Task.Delay(TimeSpan.FromSeconds(10), cancellationToken);
            await StepAsync("old root retired", ca.RetireOld);
        }

        /// <summary>A rolling replacement of node2's agent: the new one beside the old, then SIGTERM to the old (which drains).</summary>
        private async Task ReplaceAgentAsync(CancellationToken cancellationToken)
        {
            await _agentChange.WaitAsync(cancellationToken);
            try
            {
                var old = mesh.Agent("node2");
                await mesh.StartAgentAsync(Cluster.Node("node2"));
                old.Stop();
                lock (_gate)
                {
                    _replacedAgents.Add(old);
                }

                _replacements++;
                Event($"node2 agent replaced (old pid {old.Pid}, new pid {mesh.Agent("node2").Pid})");
            }
            finally
            {
                _agentChange.Release();
            }
        }

        private async Task HeldLoopAsync(ClusterPod srv, CancellationToken cancellationToken)
        {
            while (!cancellationToken.IsCancellationRequested)
            {
                await using var hold = Pod("idle1").StartWeft("app", "hold", "--to", $"{srv.Address}:9090", "--connections", HeldPerBatch.ToString(CultureInfo.InvariantCulture),
                    "--exchange-bytes", "16", "--stdin", "ignore", "--timeout-ms", "10000");
                await hold.WaitForStdoutLineAsync(l => l.Contains("\"open\"", StringComparison.Ordinal), Bounded);
                try
                {
                    await Task.Delay(HeldFor, cancellationToken);
                }
                catch (OperationCanceledException)
                {
                }

                hold.Stop();
                await hold.WaitForExitAsync(Bounded);
                var summary = hold.StdoutLines.LastOrDefault(l => l.Contains("\"summary\"", StringComparison.Ordinal));
                if (summary is null)
                {
                    Fail($"held connections: no summary ({hold.Stderr})");
                    continue;
                }

                using var json = JsonDocument.Parse(summary);
                var (open, failed, closed) = (json.RootElement.GetProperty("open").GetInt32(), json.RootElement.GetProperty("failed").GetInt32(),
                    json.RootElement.GetProperty("closed_by_peer").GetInt64());
                if (open != HeldPerBatch || failed != 0 || closed != 0)
                {
                    Fail($"held connections: {open}/{HeldPerBatch} open, {failed} failed, {closed} closed under them ({summary})");
                }
                else
                {
                    Interlocked.Add(ref _okConnections, open);
                }
            }
        }

        private async Task RoundTripLoopAsync(ClusterPod srv, CancellationToken cancellationToken)
        {
            while (!cancellationToken.IsCancellationRequested)
            {
                var run = await MeshCluster.RunPeerAsync(Pod("rr1"), Bounded, "rr", "--to", $"{srv.Address}:9090", "--size", "1024", "--count", "2000", "--warmup", "0");
                if (run.ExitCode != 0)
                {
                    Fail($"request/response: exit {run.ExitCode}: {run}");
                }
                else
                {
                    Interlocked.Increment(ref _okConnections);
                }

                try
                {
                    await Task.Delay(TimeSpan.FromSeconds(2), cancellationToken);
                }
                catch (OperationCanceledException)
                {
                }
            }
        }

        private async Task SampleLoopAsync(ManagedProcess agent, CancellationToken cancellationToken)
        {
            try
            {
                while (true)
                {
                    var sample = Sample.Read(agent.Pid, _clock.Elapsed);
                    lock (_gate)
                    {
                        _samples.Add(sample);
                    }

                    if (_samples.Count % 12 == 1)
                    {
                        say($"  {sample.At.TotalMinutes:0.0} min: node1 agent RSS {sample.RssKib / 1024.0:0.0} MiB, {sample.Fds} fds, {sample.Threads} threads; "
                            + $"{Interlocked.Read(ref _okConnections)} connections ok so far, {_failures.Count} failed");
                    }

                    await Task.Delay(SampleEvery, cancellationToken);
                }
            }
            catch (OperationCanceledException)
            {
            }
        }

        /// <summary>A send client's connections: ok, corrupted (reply hash), stopped at the end, denied (probe) or failed.</summary>
        private void CheckSends(string name, ManagedProcess process, bool denied)
        {
            var lines = process.StdoutLines.Where(l => l.StartsWith('{')).Select(l => JsonDocument.Parse(l).RootElement)
                .Where(l => !l.TryGetProperty("summary", out _)).ToList();
            Tally(name, lines, denied);
        }

        private int _probeFailures;

        private void Tally(string name, IEnumerable<JsonElement> connections, bool denied)
        {
            foreach (var connection in connections)
            {
                var error = connection.GetProperty("error").ValueKind == JsonValueKind.Null ? null : connection.GetProperty("error").GetString();
                switch (error)
                {
                    case null:
                        Interlocked.Increment(ref _okConnections);
                        Interlocked.Add(ref _bytesHashed, connection.GetProperty("received").GetInt64());
                        break;
                    case "Stopped":
                        break;
                    case "UnexpectedReplyContent":
                        Interlocked.Increment(ref _corruptedTransfers);
                        Interlocked.Add(ref _corruptedBytes, connection.GetProperty("received").GetInt64());
                        Fail($"{name}: reply corrupted: {connection}");
                        break;
                    default:
                        if (denied)
                        {
                            Interlocked.Increment(ref _probeFailures);
                        }
                        else
                        {
                            Fail($"{name}: {connection}");
                        }

                        break;
                }
            }
        }

        /// <summary>What the hash server received: every connection's bytes hash to the pattern's first bytes.</summary>
        private void CheckServer(ManagedProcess server)
        {
            foreach (var line in server.StdoutLines.Where(l => l.Contains("\"sha256\"", StringComparison.Ordinal)))
            {
                using var json = JsonDocument.Parse(line);
                if (json.RootElement.GetProperty("error").ValueKind != JsonValueKind.Null)
                {
                    // A connection that failed is the client's failure, counted there; its bytes are no hash.
                    continue;
                }

                var received = json.RootElement.GetProperty("received").GetInt64();
                Interlocked.Add(ref _bytesHashed, received);
                if (json.RootElement.GetProperty("sha256").GetString() != Pattern.Sha256(received))
                {
                    Interlocked.Increment(ref _corruptedTransfers);
                    Interlocked.Add(ref _corruptedBytes, received);
                    Fail($"long transfers: the server received corrupted bytes: {line}");
                }
            }
        }

        /// <summary>The probe's failures are explained only by DENY flows on node1's agent while the policy was (about to be) in force.</summary>
        private void CheckDenials(ManagedProcess agent1)
        {
            var denials = MeshCluster.Flows(agent1).Where(f => f.GetProperty("direction").GetString() == "outbound"
                && f.GetProperty("source_workload").GetString() == $"{Ns}/probe1" && f.GetProperty("response_flags").GetString() == ResponseDeny).ToList();
            Denied = denials.Count;
            foreach (var flow in denials)
            {
                var at = DateTimeOffset.Parse(flow.GetProperty("start").GetString()!, CultureInfo.InvariantCulture) - _startedAt;
                if (!_policyWindows.Any(w => at >= w.On - PolicyLag && at <= (w.Off ?? TimeSpan.MaxValue - PolicyLag) + PolicyLag))
                {
                    Fail($"policy probe: denied at {at.TotalSeconds:0.0} s, when no deny policy was in force: {flow}");
                }
            }

            if (_probeFailures > Denied)
            {
                Fail($"policy probe: {_probeFailures} connections failed, only {Denied} of them denied by the policy");
            }
        }

        private const string ResponseDeny = "DENY";

        public int Denied { get; private set; }

        private void Fail(string what)
        {
            lock (_gate)
            {
                _failures.Add(what);
            }

            say($"  FAILED at {_clock.Elapsed.TotalSeconds:0} s: {what}");
        }

        private void Event(string what)
        {
            lock (_gate)
            {
                _events.Add($"{_clock.Elapsed.TotalSeconds,6:0} s  {what}");
            }

            say($"  {_clock.Elapsed.TotalSeconds:0} s: {what}");
        }

        public SoakReport Report()
        {
            lock (_gate)
            {
                return new SoakReport(_clock.Elapsed, Interlocked.Read(ref _okConnections), Interlocked.Read(ref _bytesHashed),
                    Interlocked.Read(ref _corruptedTransfers), Interlocked.Read(ref _corruptedBytes), [.. _failures], _probeFailures, Denied,
                    _policyWindows.Count, _churned, _rotations, _replacements, [.. _samples], [.. _events], LeftBehind, TeardownError);
            }
        }
    }

    /// <summary>
    /// The mesh's CA files rotated in place, the way an operator would: first trust the old and the new root,
    /// then sign with the new one, then drop the old one from the bundle.
    /// </summary>
    private sealed class CaRotation(Weft.Identity.CaFiles files)
    {
        // PEM blocks end with a newline here, so a bundle is their concatenation.
        private string _currentRoot = File.ReadAllText(files.CertificatePath).TrimEnd() + "\n";
        private string _currentKey = File.ReadAllText(files.KeyPath).TrimEnd() + "\n";
        private (string Certificate, string Key)? _next;
        private int _generation;

        public void TrustBoth()
        {
            // A name of its own: two roots with one subject in a bundle would leave chain building guessing.
            using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
            var request = new CertificateRequest($"O=Weft, CN=Weft soak root {++_generation}", key, HashAlgorithmName.SHA256);
            request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
            request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
            request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
            using var root = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddMinutes(-5), DateTimeOffset.UtcNow.AddDays(30));
            _next = (root.ExportCertificatePem().TrimEnd() + "\n", key.ExportPkcs8PrivateKeyPem().TrimEnd() + "\n");
            Replace(files.TrustBundlePath, _currentRoot + _next.Value.Certificate);
        }

        public void SignWithNew()
        {
            (_currentRoot, _currentKey) = _next!.Value;

            // The key first: a certificate that does not match its key is refused and retried, never used.
            Replace(files.KeyPath, _currentKey);
            Replace(files.CertificatePath, _currentRoot);
        }

        public void RetireOld() => Replace(files.TrustBundlePath, _currentRoot);

        private static void Replace(string path, string text)
        {
            var temp = path + ".new";
            File.WriteAllText(temp, text);
            File.Move(temp, path, overwrite: true);
        }
    }
}

/// <summary>What /proc says about the sampled agent at one moment.</summary>
internal sealed record Sample(TimeSpan At, long RssKib, int Fds, int Threads)
{
    public static Sample Read(int pid, TimeSpan at)
    {
        var fields = ProcStatusFields.Read(pid);
        return new Sample(at, ProcStatusFields.Kib(fields, "VmRSS"), Directory.GetFiles($"/proc/{pid}/fd").Length,
            int.Parse(fields["Threads"], CultureInfo.InvariantCulture));
    }
}

/// <summary>The soak's outcome: the counts, the samples of node1's agent and the invariants over them.</summary>
internal sealed record SoakReport(TimeSpan Ran, long OkConnections, long BytesHashed, long CorruptedTransfers, long CorruptedBytes,
    IReadOnlyList<string> Failures, int ProbeFailures, int Denied, int PolicyFlipsOn, int PodsAdded, int CaRotations, int AgentReplacements,
    IReadOnlyList<Sample> Samples, IReadOnlyList<string> Events, IReadOnlyList<string> LeftBehind, string? TeardownError)
{
    // The first samples show the runtime warming up (JIT, thread pool, first tunnels), not a trend.
    public IReadOnlyList<Sample> Settled => Samples.Where(s => s.At >= TimeSpan.FromSeconds(Math.Min(60, Ran.TotalSeconds / 4))).ToList();

    /// <summary>
    /// The settled samples' second half: a figure that rises to a high-water mark and stays there has a slope over all
    /// settled samples but none here, where growth without bound keeps its slope.
    /// </summary>
    public IReadOnlyList<Sample> SecondHalf => Settled.Skip(Settled.Count / 2).ToList();

    /// <summary>Least-squares slope per hour of a figure over the settled samples, or over <paramref name="samples"/>.</summary>
    public double SlopePerHour(Func<Sample, double> figure, IReadOnlyList<Sample>? samples = null)
    {
        var points = samples ?? Settled;
        if (points.Count < 3)
        {
            return 0;
        }

        var xs = points.Select(p => p.At.TotalHours).ToArray();
        var ys = points.Select(figure).ToArray();
        var (mx, my) = (xs.Average(), ys.Average());
        var denominator = xs.Sum(x => (x - mx) * (x - mx));
        return denominator == 0 ? 0 : xs.Zip(ys).Sum(p => (p.First - mx) * (p.Second - my)) / denominator;
    }

    /// <summary>The largest value of a figure in the settled samples' first and second halves: growth without bound shows as a second half above the first.</summary>
    public (double First, double Second) Halves(Func<Sample, double> figure)
    {
        var points = Settled;
        if (points.Count < 2)
        {
            return (0, 0);
        }

        var half = points.Count / 2;
        return (points.Take(half).Max(figure), points.Skip(half).Max(figure));
    }

    public bool Holds => CorruptedBytes == 0 && CorruptedTransfers == 0 && Failures.Count == 0 && LeftBehind.Count == 0 && TeardownError is null;

    public string Text()
    {
        var text = new StringBuilder();
        text.AppendLine($"soak: {Ran.TotalMinutes:0.0} min; {OkConnections} connections ok, {BytesHashed / 1048576.0:0} MiB checked by hash");
        text.AppendLine($"  changes: {PodsAdded} pods added (each previous one removed), deny policy on {PolicyFlipsOn} times, {CaRotations} CA rotation(s), {AgentReplacements} agent replacement(s)");
        foreach (var e in Events)
        {
            text.AppendLine("    " + e);
        }

        text.AppendLine($"  corrupted bytes: {CorruptedBytes} ({CorruptedTransfers} transfers)");
        text.AppendLine($"  failed connections (not denied): {Failures.Count}");
        foreach (var f in Failures.Take(20))
        {
            text.AppendLine("    " + f);
        }

        text.AppendLine($"  denied by the policy in force: {ProbeFailures} probe connections failed, {Denied} DENY flows on node1");
        if (Samples.Count > 0)
        {
            var (first, last) = (Samples[0], Samples[^1]);
            text.AppendLine($"  node1 agent (settled samples from {Settled.FirstOrDefault()?.At.TotalSeconds ?? 0:0} s, every 5 s):");
            var second = SecondHalf;
            text.AppendLine($"    RSS     {first.RssKib / 1024.0,7:0.0} -> {last.RssKib / 1024.0,7:0.0} MiB, slope {SlopePerHour(s => s.RssKib / 1024.0),8:+0.0;-0.0} MiB/h, second half {SlopePerHour(s => s.RssKib / 1024.0, second),8:+0.0;-0.0} MiB/h");
            text.AppendLine($"    fds     {first.Fds,7} -> {last.Fds,7},     slope {SlopePerHour(s => s.Fds),8:+0.0;-0.0} /h,   second half {SlopePerHour(s => s.Fds, second),8:+0.0;-0.0} /h");
            text.AppendLine($"    threads {first.Threads,7} -> {last.Threads,7},     slope {SlopePerHour(s => s.Threads),8:+0.0;-0.0} /h,   second half {SlopePerHour(s => s.Threads, second),8:+0.0;-0.0} /h");
        }

        text.AppendLine($"  left behind: {(LeftBehind.Count == 0 && TeardownError is null ? "nothing (pins, namespaces, cgroups all removed)" : string.Join("; ", LeftBehind.Append(TeardownError ?? "")))}");
        text.Append(Holds ? "  invariants hold" : "  INVARIANTS BROKEN");
        return text.ToString();
    }

    public JsonObject ToJson() => new()
    {
        ["minutes"] = Math.Round(Ran.TotalMinutes, 2),
        ["ok_connections"] = OkConnections,
        ["bytes_hashed"] = BytesHashed,
        ["corrupted_bytes"] = CorruptedBytes,
        ["failed_connections"] = Failures.Count,
        ["denied"] = Denied,
        ["pods_added"] = PodsAdded,
        ["ca_rotations"] = CaRotations,
        ["agent_replacements"] = AgentReplacements,
        ["rss_mib_per_hour"] = Math.Round(SlopePerHour(s => s.RssKib / 1024.0), 2),
        ["fds_per_hour"] = Math.Round(SlopePerHour(s => s.Fds), 2),
        ["threads_per_hour"] = Math.Round(SlopePerHour(s => s.Threads), 2),
        ["rss_mib_per_hour_second_half"] = Math.Round(SlopePerHour(s => s.RssKib / 1024.0, SecondHalf), 2),
        ["fds_per_hour_second_half"] = Math.Round(SlopePerHour(s => s.Fds, SecondHalf), 2),
        ["samples"] = new JsonArray([.. Samples.Select(s => (JsonNode)new JsonObject
        {
            ["s"] = Math.Round(s.At.TotalSeconds, 1),
            ["rss_kib"] = s.RssKib,
            ["fds"] = s.Fds,
            ["threads"] = s.Threads,
        })]),
        ["left_behind"] = new JsonArray([.. LeftBehind.Select(l => (JsonNode)l)]),
        ["holds"] = Holds,
    };
}
