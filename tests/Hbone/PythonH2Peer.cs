using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Threading.Channels;

namespace Weft.Tests.Hbone;

/// <summary>
/// tests/Hbone/h2peer.py under Debian's /usr/bin/python3 (which has python3-h2; the python3 on PATH may
/// not). Stdout lines are collected; disposing kills the process we started if it is still running.
/// </summary>
internal sealed class PythonH2Peer : IAsyncDisposable
{
    private const string Interpreter = "/usr/bin/python3";
    private readonly Process _process;
    private readonly Channel<string> _lines = Channel.CreateUnbounded<string>();
    private readonly List<string> _stderr = [];

    private PythonH2Peer(Process process)
    {
        _process = process;
    }

    public static PythonH2Peer Start(params string[] args)
    {
        var start = new ProcessStartInfo(Interpreter)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(ScriptPath());
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        var process = new Process { StartInfo = start };
        var peer = new PythonH2Peer(process);
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null)
            {
                peer._lines.Writer.TryComplete();
            }
            else
            {
                peer._lines.Writer.TryWrite(e.Data);
            }
        };
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is not null)
            {
                lock (peer._stderr)
                {
                    peer._stderr.Add(e.Data);
                }
            }
        };
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return peer;
    }

    private static string ScriptPath([CallerFilePath] string thisFile = "") =>
        Path.Combine(Path.GetDirectoryName(thisFile)!, "h2peer.py");

    public string StandardError
    {
        get { lock (_stderr) { return string.Join('\n', _stderr); } }
    }

    /// <summary>The next stdout line starting with <paramref name="prefix"/>, skipping others.</summary>
    public async Task<string> ReadLineAsync(string prefix, TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? HboneTestKit.Patience);
        try
        {
            while (true)
            {
                string line = await _lines.Reader.ReadAsync(cts.Token);
                if (line.StartsWith(prefix, StringComparison.Ordinal))
                {
                    return line;
                }
                if (line.StartsWith("FAIL", StringComparison.Ordinal))
                {
                    throw new Xunit.Sdk.XunitException($"h2 peer: {line}\n{StandardError}");
                }
            }
        }
        catch (Exception e) when (e is OperationCanceledException or ChannelClosedException)
        {
            throw new Xunit.Sdk.XunitException($"h2 peer printed no '{prefix}' line\nstderr:\n{StandardError}");
        }
    }

    public async Task<int> WaitForExitAsync(TimeSpan timeout)
    {
        await _process.WaitForExitAsync().WaitAsync(timeout);
        return _process.ExitCode;
    }

    public ValueTask DisposeAsync()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill();
            }
        }
        catch (InvalidOperationException)
        {
        }
        _process.Dispose();
        return ValueTask.CompletedTask;
    }
}
