--- :checkhealth gptbigcode — the Neovim version's features, the server executable, 'completeopt',
--- and whether the running server's model and diagnostics model are ready.

local M = {}

local function check_neovim()
  if vim.fn.has("nvim-0.11") == 1 then
    vim.health.ok("Neovim 0.11+: vim.lsp.config / vim.lsp.enable, vim.lsp.completion")
  else
    vim.health.warn("Neovim before 0.11: started with vim.lsp.start; no vim.lsp.completion")
  end
  if vim.lsp.inline_completion then
    vim.health.ok("vim.lsp.inline_completion: suggestions show inline")
  else
    vim.health.info("no vim.lsp.inline_completion (Neovim 0.12+): suggestions come in the completion menu")
  end
end

--- Does the global 'completeopt' show our single item in a menu, and not insert it on its own?
local function check_completeopt(value)
  local default = vim.api.nvim_get_option_info2("completeopt", {}).default
  if vim.go.completeopt == default then
    if value then
      vim.health.ok("completeopt: the plugin sets " .. value .. " in the buffers it attaches to")
    end
    return
  end
  local flags = vim.split(vim.go.completeopt, ",")
  local menu = vim.list_contains(flags, "menuone")
  local inserts = not vim.list_contains(flags, "noinsert") and not vim.list_contains(flags, "noselect")
  if menu and not inserts then
    vim.health.ok("completeopt (yours): " .. vim.go.completeopt)
  else
    vim.health.warn("completeopt (yours) " .. vim.go.completeopt .. ": accepting may insert only the first line", {
      'add menuone and noinsert (or noselect), e.g. vim.opt.completeopt = { "menu", "menuone", "noinsert", "popup" }',
    })
  end
end

--- `python -m module`: is the module importable by that interpreter?
local function check_module(python, module)
  local result = vim.system({ python, "-c", "import " .. module }, { text = true }):wait()
  if result.code == 0 then
    vim.health.ok(string.format("%s can import %s", python, module))
  else
    vim.health.error(string.format("%s cannot import %s", python, module), {
      vim.trim(result.stderr or ""),
      "install the server into that environment: pip install -e <repository>",
    })
  end
end

local function check_executable(cmd)
  if type(cmd) ~= "table" then
    vim.health.info("cmd is a function: not checked")
    return
  end
  local executable = cmd[1]
  if vim.fn.executable(executable) == 1 then
    vim.health.ok("server executable found: " .. vim.fn.exepath(executable))
    local module = cmd[2] == "-P" and 3 or 2 -- python [-P] -m lsp_server
    if cmd[module] == "-m" and cmd[module + 1] then
      check_module(executable, cmd[module + 1])
    end
  else
    vim.health.error("server executable not found: " .. tostring(executable), {
      "install gptbigcode-lsp (pip install -e <repository>), or set cmd in setup{}, e.g.",
      'cmd = { "/path/to/venv/bin/python", "-P", "-m", "lsp_server" }',
    })
  end
end

--- The "diagnostics" entry of the status report: state idle (not loaded yet: it loads when a
--- document is first diagnosed), loading, ready or failed.
local function check_diagnostics(status)
  local diagnostics = status.diagnostics
  local options = (status.options or {}).diagnostics or {}
  if type(diagnostics) ~= "table" then
    vim.health.warn("the server reports no diagnostics state (an older gptbigcode-lsp?)")
  elseif options.enabled == false then
    vim.health.info("diagnostics are off (diagnostics.enabled = false)")
  elseif diagnostics.state == "ready" then
    vim.health.ok(string.format("diagnostics model ready: %s (%d runs)", diagnostics.model, diagnostics.runs or 0))
  elseif diagnostics.state == "failed" then
    vim.health.error("diagnostics model failed to load: " .. tostring(diagnostics.error), {
      "set diagnostics.model in setup{} to a diagnostics model folder, or to \"default\"",
    })
  elseif diagnostics.state == "loading" then
    vim.health.info("diagnostics model loading: " .. tostring(diagnostics.model))
  else
    vim.health.info("diagnostics model not loaded yet: it loads when a document is first diagnosed")
  end
end

local function check_model(gptbigcode)
  local running = vim.lsp.get_clients({ name = gptbigcode.name })
  if #running == 0 then
    vim.health.info("no gptbigcode client is running: open a file of a configured filetype")
    return
  end
  local status, err = gptbigcode.status()
  if not status then
    vim.health.error(err)
  elseif status.state == "ready" then
    vim.health.ok("model ready: " .. gptbigcode.describe(status))
  elseif status.state == "failed" then
    vim.health.error("model failed to load: " .. tostring(status.error), {
      "set options.model in setup{} to a checkpoint folder, or to \"default\"",
    })
  else
    vim.health.warn("model not ready yet: " .. gptbigcode.describe(status))
  end
  if status then
    check_diagnostics(status)
  end
end

function M.check()
  vim.health.start("gptbigcode")
  local gptbigcode = require("gptbigcode")
  check_neovim()
  if not gptbigcode.config then
    vim.health.error('setup() was not called: require("gptbigcode").setup({})')
    return
  end
  check_executable(gptbigcode.config.cmd)
  if gptbigcode.config.completion.enable and vim.lsp.completion then
    check_completeopt(gptbigcode.config.completeopt)
  end
  check_model(gptbigcode)
end

return M
